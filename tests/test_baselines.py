"""baselines.py: for each method, which steps carry gradient (denoiser calls made with grad enabled),
what the reward reads, DRTune's credit through the sampler update, and memory ordering in T."""
import dataclasses
import json
import os

import numpy as np
import pytest
import torch

import baselines
import common
import data

CAPS = ["a person waves the left hand", "a person jumps forward twice"]
T = 12


def make(build_tiny, backbone="mdm"):
    gen, _ = build_tiny(backbone)
    gen.cfg = dataclasses.replace(gen.cfg, eta=0.0)
    with torch.no_grad():
        for p in gen.denoiser_parameters():
            p.add_(0.05 * torch.randn_like(p))
    gen.requires_grad_(False)
    theta = gen.denoiser_parameters()
    for p in theta:
        p.requires_grad_(True)
    calls, guided = [], gen.guided_output                         # per denoising step: (grad on, input has graph)

    def traced(x_t, *a, **k):
        calls.append((torch.is_grad_enabled(), x_t.requires_grad))
        return guided(x_t, *a, **k)
    gen.guided_output = traced
    return gen, theta, gen.condition(CAPS, [16, 24]), calls


@pytest.fixture()
def tiny(build_tiny):
    return make(build_tiny)


def run(gen, cond, p, seed=0):
    return baselines.rollout(gen, cond, T, p, 2.5, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("method,n_grad,n_calls", [("draft-10", 10, T), ("draft-50", T, T)])
def test_draft_k_backpropagates_through_the_last_k_steps_to_the_final_sample(tiny, method, n_grad, n_calls):
    gen, theta, cond, calls = tiny
    p = baselines.plan(method, T, np.random.default_rng(0))
    assert p.grad_steps == set(range(T - n_grad, T)) and p.stop is None and not p.sg_input
    x = run(gen, cond, p)
    assert len(calls) == n_calls and [g for g, _ in calls] == [False] * (T - n_grad) + [True] * n_grad
    assert all(has for _, has in calls[T - n_grad + 1:])         # no stop-gradient inside the window
    with torch.no_grad():                                          # the reward reads the final sample
        assert torch.allclose(x, gen.sample(CAPS, [16, 24], steps=T, guidance=2.5,
                                            generator=torch.Generator().manual_seed(0)), atol=1e-5)


def test_refl_takes_one_gradient_step_and_scores_its_one_step_prediction(tiny):
    gen, theta, cond, calls = tiny
    rng = np.random.default_rng(3)
    stops = {baselines.plan("refl-10", T, rng).stop for _ in range(200)}
    assert stops == set(range(T - 10, T))                          # M values: the last 10 steps
    p = baselines.plan("refl-10", T, np.random.default_rng(1))
    x = run(gen, cond, p)
    assert len(calls) == p.stop + 1 and [g for g, _ in calls].count(True) == 1 and calls[-1][0]
    with torch.no_grad():                                          # independently: x0_hat at the stop step
        gen.scheduler.set_timesteps(T)
        g = torch.Generator().manual_seed(0)
        z = gen.init_noise(cond, g)
        for i, t in enumerate(gen.scheduler.timesteps[:p.stop + 1]):
            z, x0_hat = gen.denoise_step(z, t, cond, 2.5, eta=0.0)
        assert torch.allclose(x, gen.decode(x0_hat, cond.mask), atol=1e-5)


def test_alignprop_is_a_contiguous_final_block_drawn_once_with_checkpointing(tiny):
    gen, theta, cond, calls = tiny
    rng = np.random.default_rng(0)
    ks = []
    for _ in range(100):
        p = baselines.plan("alignprop", T, rng)
        k = len(p.grad_steps)
        assert p.ckpt and p.grad_steps == set(range(T - k, T))
        ks.append(k)
    assert min(ks) == 1 and max(ks) == T
    x = run(gen, cond, p)
    (-x.sum()).backward()                                          # checkpointed calls recompute in backward
    assert all(q.grad is not None for q in theta)


def test_drtune_detaches_every_input_and_still_credits_early_steps_through_the_update(build_tiny):
    gen, theta, cond, calls = make(build_tiny, "mld")             # eps-prediction: x0_hat = (x_t - ..eps) / ..
    rng = np.random.default_rng(0)
    for _ in range(50):
        p = baselines.plan("drtune", T, rng, drtune_k=3, drtune_m=4)
        stride = T // 3
        assert p.sg_input and T - 4 <= p.stop <= T - 1 and len(p.grad_steps) <= 3
        assert all(b - a == stride for a, b in zip(sorted(p.grad_steps), sorted(p.grad_steps)[1:]))
        assert min(p.grad_steps) < stride                           # spread over the whole chain
    for sg in (True, False):                                       # every step with grad, with and without sg
        calls.clear()
        run(gen, cond, baselines.Plan(set(range(T)), sg_input=sg))
        assert [has for _, has in calls] == [False] + [not sg] * (T - 1)   # DRTune: never sees a graph
    p = baselines.Plan({0}, sg_input=True, stop=T - 1)              # gradient only at the first step
    x = run(gen, cond, p)
    grads = torch.autograd.grad(x.pow(2).sum(), theta, allow_unused=True)
    assert sum(g.abs().sum() for g in grads if g is not None) > 0    # credit reaches step 0 via x_{t-1} = a x_t + ...
    mdm, theta_x0, cond_x0, _ = make(build_tiny, "mdm")             # x0-prediction: x0_hat = x0_theta(sg(x_t))
    x = baselines.rollout(mdm, cond_x0, T, p, 2.5, torch.Generator().manual_seed(0))
    assert not x.requires_grad                                       # ... has no path back to step 0


def test_drtune_on_a_chain_no_longer_than_its_window_always_trains_a_step():
    """T = 10, K = 5, M = 10 (--preset tiny): the stop may come before the random phase (stop 0, phase 1),
    which would leave no trained step and a backward with no graph; the stop step is then trained."""
    rng = np.random.default_rng(0)
    plans = [baselines.plan("drtune", 10, rng) for _ in range(400)]
    assert all(p.grad_steps and max(p.grad_steps) <= p.stop for p in plans)
    assert any(p.grad_steps == {p.stop} and p.stop < 10 // 5 - 1 for p in plans)   # the fallback was drawn
    defaults = [baselines.plan("drtune", 50, rng) for _ in range(400)]           # T = 50: never the fallback
    assert all(len(p.grad_steps) >= 4 and min(p.grad_steps) < 10 for p in defaults)


def test_drtune_on_an_x0_model_trains_its_stop_step():
    """For MDM x0_hat = x0_theta(sg(x_stop)): without its stop step in the plan a DRTune trajectory has no
    gradient at all (most draws); with it, every trajectory updates, and it is the only step with a graph."""
    p = baselines.plan("drtune", 50, np.random.default_rng(0))
    assert p.stop not in p.grad_steps                                # a draw that would have had no gradient
    assert baselines.plan("drtune", 50, np.random.default_rng(0), x0_model=True).grad_steps == {p.stop}
    res = baselines.memory([50], preset="tiny", backbone="mdm", batch_size=2, methods=["drtune", "refl-10"], seed=0)
    assert res["drtune"]["50"]["saved_mib"] > 0
    # ... and only that step builds a graph: the K spread steps could pass no gradient, so DRTune's memory on
    # an x0-model is one step's, ReFL's (which also trains one step and reads the same decode and reward)
    assert res["drtune"]["50"]["saved_mib"] == pytest.approx(res["refl-10"]["50"]["saved_mib"], rel=1e-3)


def test_memory_is_flat_for_easytune_and_refl_and_grows_for_draft():
    res = baselines.memory([4, 16], preset="tiny", backbone="mdm", batch_size=2,
                           methods=["easytune-step", "refl-10", "draft-50"])
    flat = lambda m: res[m]["16"]["saved_mib"] / res[m]["4"]["saved_mib"]  # noqa: E731
    assert abs(flat("easytune-step") - 1) <= 0.05 and abs(flat("refl-10") - 1) <= 0.05
    assert flat("draft-50") >= 3.0
    assert res["easytune-step"]["16"]["saved_mib"] < 0.5 * res["draft-50"]["16"]["saved_mib"]


def test_the_memory_benchmarks_json_holds_its_rows_and_the_machine(tmp_path, monkeypatch):
    out = tmp_path / "memory.json"
    monkeypatch.setattr("sys.argv", ["baselines.py", "memory", "--preset", "tiny", "--backbone", "mdm", "--steps",
                                     "4", "--batch-size", "2", "--methods", "easytune-step", "--json", str(out)])
    baselines.main()
    with open(out) as f:
        got = json.load(f)
    assert set(got) == {"easytune-step", "machine"} and got["easytune-step"]["4"]["saved_mib"] > 0
    assert got["machine"] == common.machine(torch.device("cpu"))


def test_the_vanishing_benchmarks_json_holds_the_norms_and_the_machine(build_tiny, tmp_path, monkeypatch):
    import models
    gen, _ = build_tiny("mdm")
    common.atomic_save(models.generator_checkpoint(gen), str(tmp_path / "mdm.pt"))
    monkeypatch.setattr("sys.argv", ["baselines.py", "vanish", "--backbone", "mdm", "--runs", str(tmp_path),
                                     "--steps", "4", "--probes", "1"])
    baselines.main()
    with open(tmp_path / "vanish_mdm.json") as f:
        got = json.load(f)
    assert len(got["product"]) == 4 and got["machine"] == common.machine(torch.device("cpu"))
    monkeypatch.setattr("sys.argv", ["baselines.py", "vanish", "--runs", str(tmp_path), "--generator",
                                     str(tmp_path / "tuned.pt"), "--steps", "4", "--probes", "1"])
    with pytest.raises(common.CheckpointError, match=r"tuned\.pt: checkpoint not found"):
        baselines.main()
    base_json = (tmp_path / "vanish_mdm.json").read_bytes()
    common.atomic_save(models.generator_checkpoint(gen), str(tmp_path / "tuned.pt"))
    baselines.main()                                 # another checkpoint's chain: written beside it, the base's kept
    with open(tmp_path / "tuned_vanish.json") as f:
        assert len(json.load(f)["product"]) == 4
    assert (tmp_path / "vanish_mdm.json").read_bytes() == base_json


def test_jacobian_norms_match_the_exact_jacobians_of_a_tiny_chain(build_tiny):
    """Figure 3's estimator (Hutchinson + vector-Jacobian products) against full Jacobians by autograd."""
    gen, _ = build_tiny("mld")
    with torch.no_grad():
        for p in gen.denoiser_parameters():
            p.add_(0.1 * torch.randn_like(p))
    text, lengths, T = ["a person waves the left hand"], [16], 3
    res = baselines.jacobian_norms(gen, text, lengths, steps=T, probes=40, seed=0)
    cond = gen.condition(text, lengths)
    gen.scheduler.set_timesteps(T)
    x = gen.init_noise(cond, torch.Generator().manual_seed(0))
    steps, xs = [], []
    for t in gen.scheduler.timesteps:
        xs.append(x)
        f = lambda z, t=t: gen.denoise_step(z, t, cond, eta=0.0)[0]   # noqa: E731
        steps.append(torch.autograd.functional.jacobian(f, x).reshape(x.numel(), x.numel()))
        x = f(x).detach()
    dim = x.numel()
    prod = torch.eye(dim)
    for i in reversed(range(T)):
        prod = prod @ steps[i]                                       # d x_0 / d x_t = J_{last} ... J_t (Eq. 5)
        assert res["step"][i] == pytest.approx(steps[i].norm().item() / dim ** 0.5, rel=0.15)
        assert res["product"][i] == pytest.approx(prod.norm().item() / dim ** 0.5, rel=0.15)


def test_jacobian_norms_score_the_identity_one_whatever_the_padding(build_tiny, monkeypatch):
    """The normalisation counts an item's real entries only: a chain of identities scores 1 per step and
    for the product, with a 16-frame item padded to 40 frames beside it."""
    gen, _ = build_tiny("mld")
    monkeypatch.setattr(gen, "denoise_step", lambda x_t, t, cond, *a, **k: (x_t * 1.0, x_t))
    res = baselines.jacobian_norms(gen, ["a person waves", "a person walks forward"], [16, 40], steps=3, probes=40)
    assert res["step"] == pytest.approx([1.0] * 3, rel=0.05) and res["product"] == pytest.approx([1.0] * 3, rel=0.05)


def test_every_method_shares_one_optimiser_without_the_kl_term():
    """The baselines have no KL term, so the comparison runs EasyTune without it too, at MLD's rate
    without it (3e-6), not easytune.py's MLD default (KL 100 at 1e-5); MDM keeps its own 1e-6."""
    mld, mdm = (baselines.easytune_config(baselines.CompareConfig(backbone=b)) for b in ("mld", "mdm"))
    assert (mld.lr, mld.kl_weight, mld.reward_input) == (3e-6, 0.0, "x0")
    assert (mdm.lr, mdm.kl_weight, mdm.reward_input) == (1e-6, 0.0, "noisy")
    assert baselines.easytune_config(baselines.CompareConfig(preset="tiny")).lr == 1e-4


def test_unknown_method_and_out_of_range_settings_are_clear_errors():
    with pytest.raises(baselines.common.InputError, match="unknown method 'dpok'"):
        baselines.plan("dpok", T, np.random.default_rng(0))
    with pytest.raises(baselines.common.InputError, match="--val-checks 0: must be >= 1"):   # before any work
        baselines.compare(baselines.CompareConfig(val_checks=0))
    with pytest.raises(baselines.common.InputError, match="--methods ',': no method"):
        baselines.compare(baselines.CompareConfig(methods=","))


def without_times(x):
    """x with every wall-clock field dropped (the only part of a comparison that differs between runs)."""
    if isinstance(x, dict):
        return {k: without_times(v) for k, v in x.items() if k != "time_s"}
    return [without_times(v) for v in x] if isinstance(x, list) else x


@pytest.mark.filterwarnings("ignore:R-Precision over")                     # the tiny test split: one small group
def test_an_interrupted_comparison_resumes_with_the_base_and_the_methods_it_finished(tiny_data, tmp_path,
                                                                                     monkeypatch, capsys, crash_on):
    """Stopped in its second method, then --resume: the base's evaluation and the first method are kept, not
    run again, and the table, curves and log equal those of a comparison never stopped (an equal number of
    trajectories, so each method's run is deterministic); results_traj.json.part is gone at the end."""
    for presets, steps in ((baselines.metrics.EVALUATOR_PRESETS, {"steps": 20}), (baselines.spl.PRESETS, {"steps": 10}),
                           (baselines.models.PRESETS, None)):                 # prerequisites of a few steps: fast
        monkeypatch.setitem(presets, "tiny", (presets["tiny"][0], {**presets["tiny"][1], "vae_steps": 5, "steps": 5})
                            if steps is None else {**presets["tiny"], **steps})
    ccfg = baselines.CompareConfig(preset="tiny", runs=str(tmp_path), data=tiny_data, methods="easytune-step,refl-10",
                                   trajectories=1, val_checks=1, val_items=4, replications=1)
    out = tmp_path / (os.path.basename(tiny_data) + "-tiny") / "compare" / "mld"      # the tiny preset: its own folder
    whole = baselines.compare(dataclasses.replace(ccfg, resume=True))      # nothing to resume yet: said, then afresh
    assert "--resume: no " + str(out / "results_traj.json.part") + " to resume" in capsys.readouterr().out
    whole_log = [json.loads(l) for l in open(out / "log.jsonl")]
    tune, evaluate, calls = baselines.tune, baselines.metrics.evaluate, []
    monkeypatch.setattr(baselines, "tune", crash_on(tune, 2))                 # stopped in the second method
    with pytest.raises(KeyboardInterrupt):
        baselines.compare(ccfg)
    monkeypatch.setattr(baselines, "tune", lambda m, *a, **k: calls.append(m) or tune(m, *a, **k))
    monkeypatch.setattr(baselines.metrics, "evaluate", lambda *a, **k: calls.append("evaluate") or evaluate(*a, **k))
    with pytest.raises(common.CheckpointError, match=r"results_traj.json.part: --resume with settings .*replications"):
        baselines.compare(dataclasses.replace(ccfg, resume=True, replications=2))
    saved = (out / "results_traj.json.part").read_text()
    (out / "results_traj.json.part").write_text("{}")                    # JSON, but not a comparison's state
    with pytest.raises(common.CheckpointError, match=r"json\.part: incomplete, or written by other code \(KeyError"):
        baselines.compare(dataclasses.replace(ccfg, resume=True))
    (out / "results_traj.json.part").write_text(saved)
    with open(out / "log.jsonl", "a") as f:
        f.write('{"method": "refl-10", "tra')                               # the line a kill cut: dropped
    got = baselines.compare(dataclasses.replace(ccfg, resume=True))
    assert calls == ["refl-10", "evaluate"]                                # only the method that was stopped
    assert without_times(got["results"]) == without_times(whole["results"])
    assert without_times(got["curves"]) == without_times(whole["curves"])
    assert without_times([json.loads(l) for l in open(out / "log.jsonl")]) == without_times(whole_log)
    assert not (out / "results_traj.json.part").exists()
    assert got["machine"] == common.machine(torch.device("cpu"))            # what the wall clock was measured on


def test_a_missing_matplotlib_skips_the_plot_with_a_note(monkeypatch, tmp_path, capsys):
    import viz

    def no_matplotlib():
        raise common.InputError("pictures need matplotlib, an optional extra: pip install matplotlib")

    monkeypatch.setattr(viz, "_plt", no_matplotlib)
    baselines.plot({"a": ([1, 2], [3, 4])}, "x", "y", str(tmp_path / "p.png"))   # benchmarks end cleanly
    assert "matplotlib not installed" in capsys.readouterr().out
    assert not (tmp_path / "p.png").exists()


def test_the_stick_figure_is_drawn_by_a_rotation_not_a_mirror():
    """viz.to_plot maps HumanML3D's right-handed axes (y up) to matplotlib's (z up) with determinant +1,
    so a left arm is drawn on the figure's left (plotting (x, z, y) has determinant -1: a mirror image)."""
    import viz
    basis = np.stack([np.stack(viz.to_plot(e)) for e in np.eye(3)], 1)     # columns: images of e_x, e_y, e_z
    assert np.allclose(basis @ basis.T, np.eye(3)) and np.isclose(np.linalg.det(basis), 1.0)
    assert np.allclose(basis[:, 1], [0, 0, 1])                              # HumanML3D's up is the plot's up


@pytest.mark.parametrize("bad", [np.zeros((0, 10, 22, 3)), np.full((2, 22, 3), "a"), np.zeros((5, 23, 3))])
def test_viz_refuses_joints_it_cannot_draw_naming_the_file(bad, tmp_path, monkeypatch):
    import viz
    np.save(tmp_path / "j.npy", bad)
    monkeypatch.setattr("sys.argv", ["viz.py", "--joints", str(tmp_path / "j.npy"), "--out", str(tmp_path / "v.png")])
    with pytest.raises(common.InputError, match=r"j\.npy: expected numbers shaped \(frames, 22 or 21 joints, 3\)"):
        viz.main()


def test_viz_names_a_clip_that_is_not_in_the_folder(tiny_data, tmp_path, monkeypatch):
    """--name of a clip the folder does not hold: named as a missing clip, not as its missing captions."""
    import viz
    monkeypatch.setattr("sys.argv", ["viz.py", "--data", tiny_data, "--name", "999999", "--out", str(tmp_path / "v.png")])
    with pytest.raises(common.InputError, match=r"--name 999999: no clip .*new_joints/999999\.npy"):
        viz.main()


def test_the_one_commands_gifs_draw_a_kit_ml_model_with_its_skeleton(kit_data, tmp_path, monkeypatch):
    """A generator of 251-d features (KIT-ML) is drawn with KIT's 21-joint skeleton, not HumanML3D's 22."""
    import sys
    import types

    import models
    import pipeline
    import viz
    torch.manual_seed(0)
    gen = models.build_model(models.ModelConfig(backbone="mdm", **models.PRESETS["tiny"][0]),
                             data.build_vocab(kit_data), 251).eval()
    gen.mean, gen.std = (torch.tensor(a) for a in data.load_stats(kit_data))
    gen.cfg = dataclasses.replace(gen.cfg, steps=2)
    drawn = []
    monkeypatch.setitem(sys.modules, "matplotlib", sys.modules.get("matplotlib", types.ModuleType("matplotlib")))
    monkeypatch.setattr(viz, "animate", lambda clips, titles, path, skel=data.HUMANML3D: drawn.append((clips, skel)))
    pipeline.render(gen, gen, str(tmp_path / "gifs"), "cpu")
    assert drawn and all(skel is data.KIT and clips[0].shape[1:] == (21, 3) for clips, skel in drawn)


def test_viz_draws_kit_ml_millimetres_in_metres(kit_data, tmp_path, monkeypatch):
    """KIT-ML's joints are millimetres: drawn as they are, the figure is 1000 times the axes' 1.5 m."""
    pytest.importorskip("matplotlib")
    import viz
    drawn = []
    monkeypatch.setattr(viz, "_draw", lambda ax, joints, t, skel, radius=1.5:
                        drawn.append((np.abs(joints).max(), skel)))
    name = data.read_split(kit_data, "test")[0]
    monkeypatch.setattr("sys.argv", ["viz.py", "--data", kit_data, "--name", name, "--out", str(tmp_path / "k.png")])
    viz.main()
    assert drawn and all(skel is data.KIT and 1.0 < m < 5.0 for m, skel in drawn)
