"""easytune.py: Corollary 2 against an independent computation, O(1) memory, step vs chain
optimisation, the step schedules of App. A.5, and selection that never reads the test split."""
import copy
import dataclasses
import json

import numpy as np
import pytest
import torch

import data
import easytune
import metrics

CAPS = ["a person waves the left hand", "a person jumps forward twice"]
LENGTHS = [16, 24]


def setup(build_tiny, tiny_data, T=4, **over):
    """A tiny MDM with its weights jittered (so every parameter matters) and a deterministic ODE sampler."""
    gen, reward = build_tiny("mdm")
    gen.cfg = dataclasses.replace(gen.cfg, eta=0.0)
    with torch.no_grad():
        for p in gen.denoiser_parameters():
            p.add_(0.05 * torch.randn_like(p))
    theta = gen.denoiser_parameters()
    gen.requires_grad_(False)
    for p in theta:
        p.requires_grad_(True)
    cfg = easytune.EasyTuneConfig(backbone="mdm", reward_input="noisy", sample_steps=T, guidance=2.5, **over)
    return gen, easytune.RewardFn(reward, gen, tiny_data), theta, cfg


def flat(grads):
    return torch.cat([g.reshape(-1) for g in grads])


def test_corollary_2_gradient_is_the_one_step_term_and_the_chain_adds_exactly_the_recursive_terms(build_tiny,
                                                                                                   tiny_data):
    gen, reward_fn, theta, cfg = setup(build_tiny, tiny_data)
    cond = gen.condition(CAPS, LENGTHS)
    gen.scheduler.set_timesteps(cfg.sample_steps)
    ts = gen.scheduler.timesteps
    i = 2                                                          # the step we train (t = ts[2])
    t_prev = int(ts[i]) - gen.scheduler.step_ratio
    x_t = gen.init_noise(cond, torch.Generator().manual_seed(0))
    for k in range(i):                                             # x_t still depends on theta (Eq. 5)
        x_t, _ = gen.denoise_step(x_t, ts[k], cond, cfg.guidance)

    def R(x_prev):
        return easytune.step_reward(gen, reward_fn, x_prev, None, t_prev, cond, CAPS, "noisy").mean()

    # what EasyTune applies (Eq. 7-8): the loss of pi_theta(sg(x_t), t, c)
    loss, _, _ = easytune.step_loss(gen, reward_fn, x_t, ts[i], cond, CAPS, cfg)
    g_easy = flat(torch.autograd.grad(loss, theta))
    # independently: dR/dx_{t-1} on a detached copy, then the VJP through one step only
    x_prev, _ = gen.denoise_step(x_t.detach(), ts[i], cond, cfg.guidance)
    x_leaf = x_prev.detach().requires_grad_(True)
    dR_dx = torch.autograd.grad(-R(x_leaf), x_leaf)[0]
    g_ind = flat(torch.autograd.grad(x_prev, theta, grad_outputs=dR_dx))
    assert torch.allclose(g_easy, g_ind, rtol=1e-4, atol=1e-7)
    # the full-chain gradient (Eq. 5) = the one-step term + the recursive terms, which are the
    # gradient through x_t alone (the last step's own theta frozen in a copy)
    x_full, _ = gen.denoise_step(x_t, ts[i], cond, cfg.guidance)
    g_full = flat(torch.autograd.grad(-R(x_full), theta, retain_graph=True))
    frozen = copy.deepcopy(gen).requires_grad_(False)
    x_rec, _ = frozen.denoise_step(x_t, ts[i], cond, cfg.guidance)
    g_rec = flat(torch.autograd.grad(-R(x_rec), theta))
    assert torch.allclose(g_full, g_easy + g_rec, rtol=1e-3, atol=1e-6)
    assert g_rec.norm() > 1e-3 * g_full.norm()                     # the terms EasyTune drops are real


def trajectory_peak(build_tiny, tiny_data, T):
    gen, reward_fn, theta, cfg = setup(build_tiny, tiny_data, T=T, lr=1e-4)
    opt = torch.optim.AdamW(theta, lr=cfg.lr)
    meter = metrics.SavedTensorMeter(gen, reward_fn.reward)
    recs = easytune.easytune_trajectory(gen, reward_fn, CAPS, torch.tensor(LENGTHS), cfg, opt, theta,
                                        np.random.default_rng(0), torch.Generator().manual_seed(0), meter=meter)
    assert len(recs) == T                                          # T updates per trajectory
    return meter.peak


def test_step_optimisation_memory_is_flat_in_T(build_tiny, tiny_data):
    p10, p50 = trajectory_peak(build_tiny, tiny_data, 10), trajectory_peak(build_tiny, tiny_data, 50)
    assert p10 > 0 and abs(p50 / p10 - 1) <= 0.02, (p10, p50)


def weights_seen(method, build_tiny, tiny_data):
    """The value of one weight at every denoiser call of one trajectory, and theta' at the end."""
    gen, reward_fn, theta, cfg = setup(build_tiny, tiny_data, T=5, lr=1e-2, method=method)
    seen = []
    gen.x_out.register_forward_pre_hook(lambda m, a: seen.append(m.weight[0, 0].item()))
    theta_prime = [p.detach().clone().requires_grad_(True) for p in theta] if method == "chain" else None
    opt = torch.optim.AdamW(theta_prime or theta, lr=cfg.lr)
    start, w0 = [p.detach().clone() for p in theta], gen.x_out.weight[0, 0].item()
    easytune.easytune_trajectory(gen, reward_fn, CAPS, torch.tensor(LENGTHS), cfg, opt, theta,
                                 np.random.default_rng(0), torch.Generator().manual_seed(0), theta_prime)
    return seen, start, theta, theta_prime, w0


def test_chain_samples_with_the_starting_weights_and_step_with_the_updated_ones(build_tiny, tiny_data):
    seen, start, theta, theta_prime, w0 = weights_seen("chain", build_tiny, tiny_data)
    assert len(set(seen)) == 1 and seen[0] == w0              # every step sampled with the starting theta
    assert any(not torch.equal(q, s) for q, s in zip(theta_prime, start))
    assert all(torch.equal(p, q) for p, q in zip(theta, theta_prime))   # then theta <- theta' (Alg. 1, 15-17)
    seen, start, theta, _, _ = weights_seen("step", build_tiny, tiny_data)
    assert len(set(seen)) == 5                                     # a new theta after each of the 5 updates
    assert any(not torch.equal(p, s) for p, s in zip(theta, start))


def test_kl_term_vanishes_against_itself_and_pulls_back_otherwise(build_tiny, tiny_data):
    gen, reward_fn, theta, cfg = setup(build_tiny, tiny_data)
    cond = gen.condition(CAPS, LENGTHS)
    gen.scheduler.set_timesteps(cfg.sample_steps)
    x_t, t = gen.init_noise(cond, torch.Generator().manual_seed(1)), gen.scheduler.timesteps[1]
    plain = easytune.step_loss(gen, reward_fn, x_t, t, cond, CAPS, cfg)[0]
    kl_cfg = dataclasses.replace(cfg, kl_weight=3.0)
    same = easytune.step_loss(gen, reward_fn, x_t, t, cond, CAPS, kl_cfg, ref=copy.deepcopy(gen))[0]
    assert torch.allclose(plain, same)
    ref = copy.deepcopy(gen)
    with torch.no_grad():
        for p in ref.denoiser_parameters():
            p.add_(0.01)
    moved = easytune.step_loss(gen, reward_fn, x_t, t, cond, CAPS, kl_cfg, ref=ref)[0]
    assert moved > plain


def test_step_schedules_and_weights():
    rng = np.random.default_rng(0)
    assert easytune.trained_steps("all", 50, rng) == list(range(50))
    assert easytune.trained_steps("last:10", 50, rng) == list(range(40, 50))   # the released code
    assert easytune.trained_steps("first:3", 50, rng) == [0, 1, 2]
    pick = easytune.trained_steps("random:7", 50, rng)
    assert len(set(pick)) == 7 and all(0 <= i < 50 for i in pick)
    # App. A.5 with t = T - i: increasing weighs the last step 1.5, the first 0.5; decreasing the reverse
    assert easytune.step_weight("increasing", 49, 50) == pytest.approx(1.48)
    assert easytune.step_weight("increasing", 0, 50) == pytest.approx(0.5)
    assert easytune.step_weight("decreasing", 0, 50) == pytest.approx(1.5)
    for bad in ("last:0", "last:x", "some:3", "random:51"):
        with pytest.raises(data.InputError, match="--train-steps"):
            easytune.trained_steps(bad, 50, rng)


def test_step_weight_scales_the_update_where_a_weight_on_the_loss_would_be_undone(build_tiny, tiny_data):
    """App. A.5's w_t as the step's lr: the first step under "decreasing" (w = 1.5) moves theta exactly 1.5
    times as far as under "uniform", with clipping active. A weight on the loss would not: the clipped
    gradient has norm `clip` whatever the weight, and AdamW's first step is g / |g| anyway."""
    def first_update(weighting):
        gen, reward_fn, theta, cfg = setup(build_tiny, tiny_data, lr=1e-3, clip=1e-3, train_steps="first:1",
                                           weighting=weighting)
        start = [p.detach().clone() for p in theta]
        recs = easytune.easytune_trajectory(gen, reward_fn, CAPS, torch.tensor(LENGTHS), cfg,
                                            torch.optim.AdamW(theta, lr=cfg.lr), theta, np.random.default_rng(0),
                                            torch.Generator().manual_seed(0))
        return flat([p.detach() - s for p, s in zip(theta, start)]), recs
    uniform, recs = first_update("uniform")
    decreasing, recs_dec = first_update("decreasing")
    assert len(recs) == 1 and recs[0]["grad_norm"] > 1e-3 and recs_dec[0]["lr"] == pytest.approx(1.5e-3)
    assert uniform.abs().max() > 0 and torch.allclose(decreasing, 1.5 * uniform, rtol=1e-4, atol=1e-6)


def test_backbone_defaults_fill_only_what_was_not_given():
    """The per-backbone defaults (chosen on held-out data) apply unless a flag or the tiny preset says
    otherwise -- and a flag wins even when it repeats the dataclass default: `--backbone mdm --lr 1e-5`
    must not turn into MDM's 1e-6, nor `--kl-weight 0` on MLD into its 100."""
    r = lambda **kw: easytune.resolve(easytune.EasyTuneConfig(**kw))    # noqa: E731
    assert (r(backbone="mld").lr, r(backbone="mld").trajectories, r(backbone="mld").kl_weight) == (1e-5, 15, 100.0)
    assert (r(backbone="mdm").lr, r(backbone="mdm").trajectories, r(backbone="mdm").kl_weight) == (1e-6, 30, 0.0)
    assert r(backbone="mdm", lr=2e-6).lr == 2e-6 and r(backbone="mdm", preset="tiny").trajectories == 4
    assert r(backbone="mdm").reward_input == r(backbone="mld").reward_input == "noisy"
    assert r(backbone="mld", reward_input="x0").reward_input == "x0"

    cli = lambda *argv: easytune.parse(list(argv))                      # noqa: E731
    assert (cli("--backbone", "mdm").lr, cli("--backbone", "mdm").trajectories) == (1e-6, 30)
    c = cli("--backbone", "mdm", "--lr", "1e-5", "--trajectories", "15")       # both equal the dataclass default
    assert (c.lr, c.trajectories) == (1e-5, 15)
    assert cli("--backbone", "mld", "--kl-weight", "0").kl_weight == 0.0
    assert cli("--backbone=mld", "--preset", "tiny", "--batch-size", "32").batch_size == 32
    for flag, value, want in (("--val-every", "0", ">= 1"), ("--lr", "0.0", "> 0"), ("--sample-steps", "1000", "1..999")):
        with pytest.raises(data.InputError, match=f"{flag} {value}: must be .*{want}"):   # not a crash minutes later
            cli("--backbone", "mld", flag, value)


def val_gets_worse(monkeypatch):
    """Each val check runs for real, then reports a reward worse than the last: nothing ever improves.
    -> the list of calls so far."""
    real_score, calls = easytune.val_score, []

    def worse_each_time(*a, **k):
        s = real_score(*a, **k)
        calls.append(1)
        return {**s, "val_reward": s["val_reward"] - len(calls)}
    monkeypatch.setattr(easytune, "val_score", worse_each_time)
    return calls


def test_selection_reads_val_never_test_and_falls_back_to_the_pretrained_model(build_tiny, tiny_data, tmp_path,
                                                                              monkeypatch):
    read = []
    real_read = data.read_split
    monkeypatch.setattr(data, "read_split", lambda root, split: read.append(split) or real_read(root, split))
    calls = val_gets_worse(monkeypatch)
    gen, reward = build_tiny("mdm")
    before = {k: v.clone() for k, v in gen.state_dict().items()}
    cfg = easytune.resolve(easytune.EasyTuneConfig(backbone="mdm", preset="tiny", trajectories=2, val_every=1,
                                                   batch_size=4, sample_steps=3))
    summary = easytune.finetune(gen, reward, cfg, tiny_data, str(tmp_path), str(tmp_path / "log.jsonl"))
    assert "test" not in read and "val" in read
    assert len(calls) == 3 and summary["best"] is None             # base + 2 checks; nothing beat the base
    best = data.load_checkpoint(str(tmp_path / "best.pt"), "generator")["model"]
    assert all(torch.equal(best[k], before[k]) for k in before)    # best.pt is the pre-trained model
    log = [l for l in open(tmp_path / "log.jsonl")]
    assert len(log) == summary["updates"] == 2 * 3


@pytest.mark.parametrize("method", ["step", "chain"])
def test_resume_after_a_crash_continues_the_run_exactly(build_tiny, tiny_data, tmp_path, monkeypatch, method):
    """Killed in trajectory 4 (checkpoint at 2), then --resume: the same weights, optimizer moments and
    log as the run that was never interrupted (the updates after the checkpoint run again, logged once);
    a --resume that changes a setting of the saved run is refused, naming the setting."""
    cfg = easytune.resolve(easytune.EasyTuneConfig(backbone="mdm", preset="tiny", method=method, kl_weight=1.0,
                                                   trajectories=4, val_every=2, batch_size=4, sample_steps=3))

    def run(out, **over):
        gen, reward = build_tiny("mdm")
        easytune.finetune(gen, reward, dataclasses.replace(cfg, **over), tiny_data, str(out), str(out / "log.jsonl"))
        ck = data.load_checkpoint(str(out / "last.pt"), "easytune")
        log = [{k: v for k, v in json.loads(l).items() if k != "peak_saved_mib"} for l in open(out / "log.jsonl")]
        return ck, log

    (a := tmp_path / "once").mkdir(), (b := tmp_path / "killed").mkdir()
    want, want_log = run(a)
    real, calls = easytune.easytune_trajectory, []

    def dies_in_the_fourth(*args, **kw):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*args, **kw)
    monkeypatch.setattr(easytune, "easytune_trajectory", dies_in_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        run(b)
    assert len(open(b / "log.jsonl").readlines()) == 3 * 3          # three trajectories of 3 updates, then killed
    monkeypatch.setattr(easytune, "easytune_trajectory", real)
    with pytest.raises(data.CheckpointError, match=r"last.pt: --resume with settings .*lr: saved 0.0001, asked 0.001"):
        run(b, resume=True, lr=1e-3)
    got, got_log = run(b, resume=True)
    assert got["trajectory"] == want["trajectory"] == 4 and got["updates"] == want["updates"] == 12
    assert all(torch.equal(got["model"][k], want["model"][k]) for k in want["model"])
    moments = lambda ck: [v for st in ck["optimizer"]["state"].values() for v in st.values()]
    assert all(torch.equal(x, y) for x, y in zip(moments(got), moments(want)))
    assert got_log == want_log


def _evaluator(root, seed):
    torch.manual_seed(seed)
    cfg = metrics.EvaluatorConfig(data=root, **metrics.EVALUATOR_PRESETS["tiny"])
    ds = data.MotionTextDataset(root, "train")
    ev = metrics.Evaluator(cfg, metrics.word_vocab(root), ds.dims).eval()
    ev.mean.copy_(torch.tensor(ds.mean)), ev.std.copy_(torch.tensor(ds.std))
    return ev, {"kind": "evaluator", "config": dataclasses.asdict(cfg), "words": ev.words, "dims": ds.dims,
                "model": ev.state_dict()}


def test_an_evaluator_as_the_reward_is_minus_its_distance_and_never_the_test_evaluator(build_tiny, tiny_data,
                                                                                         tmp_path):
    """The diagnostic reward (--reward-model EVALUATOR) is -||E_M(x) - E_T(c)||, the per-item MM-Dist,
    computed here from the evaluator's own embeddings of the raw motions; and the test evaluator, even
    renamed, is refused, so the evaluator that reports never trains."""
    gen, _ = build_tiny("mld")
    ev, ck = _evaluator(tiny_data, seed=0)
    ds = data.MotionTextDataset(tiny_data, "val", deterministic=True)
    b = data.collate([ds[i] for i in range(4)])
    feats = b["motion"] * b["mask"][..., None]                      # generator-normalised (gen uses train stats)
    reward_fn = easytune.RewardFn(ev, gen, tiny_data)
    r = reward_fn(feats, b["lengths"], b["captions"])
    with torch.no_grad():
        raw = ds.denormalize(b["motion"]) * b["mask"][..., None]
        want = -metrics.euclidean(ev.embed_text(b["tokens"]).numpy(), ev.embed_motion(raw, b["lengths"]).numpy())
    assert np.allclose(r.detach().numpy(), np.diag(want), atol=1e-4)
    with pytest.raises(data.InputError, match="clean motion"):
        reward_fn(feats, b["lengths"], b["captions"], alpha_bar=torch.full((4,), 0.5))
    with pytest.raises(data.InputError, match="contrastive"):
        easytune.RewardFn(ev, gen, tiny_data, "contrastive")

    test_path, copy_path, other_path = (str(tmp_path / n) for n in ("evaluator.pt", "renamed.pt", "second.pt"))
    torch.save(ck, test_path), torch.save(ck, copy_path), torch.save(_evaluator(tiny_data, seed=1)[1], other_path)
    with pytest.raises(data.InputError, match="renamed.pt: this is the test evaluator"):
        easytune.load_reward_model(copy_path, test_path, "cpu")
    assert isinstance(easytune.load_reward_model(other_path, test_path, "cpu"), metrics.Evaluator)
    torch.save({"kind": "generator"}, str(tmp_path / "gen.pt"))
    with pytest.raises(data.InputError, match="gen.pt: a 'generator' checkpoint"):
        easytune.load_reward_model(str(tmp_path / "gen.pt"), test_path, "cpu")


def test_a_reward_ensemble_is_the_mean_of_its_members(build_tiny, tiny_data, tmp_path):
    """--reward-model a.pt,b.pt: R_phi is (R_a + R_b) / 2 at a noise level, computed here from each member
    on its own; an evaluator among the members, members of another dataset and the contrastive form are
    refused."""
    gen, r_a = build_tiny("mld", seed=0)
    _, r_b = build_tiny("mld", seed=1)
    ck = lambda r: {"kind": "reward", "config": dataclasses.asdict(r.cfg), "vocab": r.vocab.itos,  # noqa: E731
                    "dims": int(r.mean.shape[0]), "model": r.state_dict()}
    a, b, ev, other = (str(tmp_path / n) for n in ("a.pt", "b.pt", "ev.pt", "other.pt"))
    torch.save(ck(r_a), a), torch.save(ck(r_b), b), torch.save(_evaluator(tiny_data, seed=1)[1], ev)
    ens = easytune.load_reward_model(f"{a},{b}", str(tmp_path / "test_evaluator.pt"), "cpu")
    ds = data.MotionTextDataset(tiny_data, "val", deterministic=True)
    batch = data.collate([ds[i] for i in range(4)])
    x, ab = batch["motion"] * batch["mask"][..., None], torch.full((4,), 0.3)
    r = easytune.RewardFn(ens, gen, tiny_data)(x, batch["lengths"], batch["captions"], ab)
    each = [easytune.RewardFn(m, gen, tiny_data)(x, batch["lengths"], batch["captions"], ab) for m in (r_a, r_b)]
    assert r.shape == (4,) and torch.allclose(r, (each[0] + each[1]) / 2, atol=1e-5)
    assert not torch.allclose(each[0], each[1], atol=1e-3)                  # two different members
    with pytest.raises(data.InputError, match="an ensemble takes spl.py rewards only"):
        easytune.load_reward_model(f"{a},{ev}", str(tmp_path / "test_evaluator.pt"), "cpu")
    moved = ck(r_b)
    moved["model"] = {**moved["model"], "mean": moved["model"]["mean"] + 1}
    torch.save(moved, other)
    with pytest.raises(data.InputError, match="trained on one dataset"):
        easytune.load_reward_model(f"{a},{other}", str(tmp_path / "test_evaluator.pt"), "cpu")
    with pytest.raises(data.InputError, match="not an ensemble"):
        easytune.RewardFn(ens, gen, tiny_data, "contrastive")


def test_a_stopped_run_stays_stopped_a_fresh_start_drops_the_old_last_pt_and_devices_do_not_mix(
        build_tiny, tiny_data, tmp_path, monkeypatch):
    """--resume of a run that stopped early trains nothing more; a run started afresh never leaves the previous
    run's last.pt to be resumed into it; a CPU run does not continue a CUDA run's noise draws."""
    val_gets_worse(monkeypatch)
    cfg = easytune.resolve(easytune.EasyTuneConfig(backbone="mdm", preset="tiny", trajectories=4, val_every=1,
                                                   patience=1, batch_size=4, sample_steps=3))
    log, last = tmp_path / "log.jsonl", tmp_path / "last.pt"

    def run(**over):
        gen, reward = build_tiny("mdm")
        return easytune.finetune(gen, reward, dataclasses.replace(cfg, **over), tiny_data, str(tmp_path), str(log))
    assert run()["trajectories"] == 1                               # stopped after the first val check
    again = run(resume=True)
    assert again["trajectories"] == 1 and again["updates"] == 3 and len(open(log).readlines()) == 3

    ck = torch.load(last, weights_only=False)
    torch.save({**ck, "device_type": "cuda"}, last)
    with pytest.raises(data.CheckpointError, match="last.pt: saved on cuda, resuming on cpu"):
        run(resume=True)

    def killed(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(easytune, "easytune_trajectory", killed)
    with pytest.raises(KeyboardInterrupt):
        run()                                                       # afresh, killed before its first check
    assert not last.exists()
