"""metrics.py: the T2M metrics against closed forms, the saved-tensor memory meter on graphs whose
saved bytes are known, and a tiny evaluator that retrieves real test pairs above chance."""
import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import common
import data
import diagnostics
import metrics
import models
import synth


def test_fid_of_a_set_with_itself_is_zero():
    x = np.random.default_rng(0).normal(size=(500, 8))
    assert abs(metrics.fid(x, x)) < 1e-6


def test_fid_of_two_gaussians_matches_the_closed_form():
    """For diagonal Gaussians: |mu1 - mu2|^2 + sum(s1 + s2 - 2 sqrt(s1 s2))."""
    rng = np.random.default_rng(1)
    mu1, mu2 = np.array([0.0, 1.0, -1.0, 2.0]), np.array([0.5, 0.0, -1.0, 1.0])
    s1, s2 = np.array([1.0, 4.0, 0.25, 1.0]), np.array([2.0, 1.0, 0.25, 9.0])
    x = mu1 + np.sqrt(s1) * rng.normal(size=(200_000, 4))
    y = mu2 + np.sqrt(s2) * rng.normal(size=(200_000, 4))
    closed = ((mu1 - mu2) ** 2).sum() + (s1 + s2 - 2 * np.sqrt(s1 * s2)).sum()
    assert abs(metrics.fid(x, y) - closed) < 0.05 * closed


def test_r_precision_bounds():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(640, 16))
    (r1, r2, r3), mm = metrics.r_precision(emb, emb, rng)
    assert r1 == r2 == r3 == 1.0 and mm < 1e-6                              # perfectly matched
    (r1, r2, r3), _ = metrics.r_precision(rng.normal(size=(6400, 16)), rng.normal(size=(6400, 16)), rng)
    for k, r in enumerate((r1, r2, r3), 1):                                  # random: about k / 32
        assert abs(r - k / 32) < 0.02
    with pytest.warns(UserWarning, match="R-Precision over 8 items, fewer than a group of 32"):
        metrics.r_precision(emb[:8], emb[:8], rng)                           # one group of 8: chance 1/8


def test_diversity_and_multimodality():
    rng = np.random.default_rng(0)
    assert metrics.diversity(np.ones((400, 5)), rng) == 0.0
    x = rng.normal(size=(20000, 3))
    assert abs(metrics.diversity(x, rng) - 2.0 ** 0.5 * 1.596) < 0.15     # E|a - b| for 3-d N(0, 2I)
    assert metrics.multimodality(np.zeros((10, 30, 4)), rng) == 0.0



def test_fid_uses_the_unbiased_covariance_at_small_n():
    """T2M's FID fits each set with np.cov (ddof = 1): at n = 12 that is 12/11 of the plug-in covariance,
    so the value is checked against an independent ddof-1 computation, Tr sqrtm(S1 S2) as the sum of
    the square roots of S1 S2's eigenvalues (real, >= 0: S1 S2 is similar to a PSD matrix)."""
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(12, 3)), 2.0 * rng.normal(size=(12, 3)) @ np.diag([1.0, 0.5, 1.5])

    def independent(ddof):
        cx, cy = ((a - a.mean(0)).T @ (a - a.mean(0)) / (len(a) - ddof) for a in (x, y))
        root = np.sqrt(np.linalg.eigvals(cx @ cy).real.clip(min=0)).sum()
        return ((x.mean(0) - y.mean(0)) ** 2).sum() + np.trace(cx) + np.trace(cy) - 2 * root
    assert metrics.fid(x, y) == pytest.approx(independent(1), rel=1e-6)
    assert abs(independent(1) - independent(0)) > 0.03 * independent(1)             # ddof 0: 4% lower here


def test_diversity_draws_each_index_set_without_replacement():
    """T2M's Diversity: two independent draws of `times` distinct items (replace=False), mean paired
    distance. With one outlier at distance 5 among 49 equal points and times = all 50, the outlier is
    in each draw exactly once: the value is 2 * 5 / 50, or 0 when both put it in the same slot."""
    x = np.zeros((50, 3))
    x[7] = (3.0, 4.0, 0.0)
    unpaired = [round(metrics.diversity(x, np.random.default_rng(s)) * 50 / 5, 9) for s in range(40)]
    assert set(unpaired) <= {0, 2} and unpaired.count(2) >= 36                     # P(same slot) = 1/50
    unpaired = [round(metrics.diversity(x, np.random.default_rng(s), times=10) * 10 / 5, 9) for s in range(40)]
    assert set(unpaired) <= {0, 1, 2}                                              # at most once per draw of 10


def test_multimodality_compares_samples_of_the_same_caption_only():
    """T2M's MultiModality: per caption, 10 pairs of its own 30 samples (two independent uniform draws).
    Caption c's samples sit at c * 100 e_0 (pairs across captions would be ~100 apart), plus
    (a) e_r / sqrt 2, a regular simplex of edge 1: a pair is 1 apart unless it is one sample twice
    (probability 1/30), E = 1 - 1/30; (b) r e_1, on a line: E|a - b| = (R^2 - 1) / (3 R) for a, b uniform."""
    C, R = 1000, 30
    simplex, line = np.zeros((C, R, R + 1)), np.zeros((C, R, 2))
    simplex[:, :, 0] = line[:, :, 0] = 100.0 * np.arange(C)[:, None]
    simplex[:, np.arange(R), np.arange(R) + 1] = 2 ** -0.5
    line[:, :, 1] = np.arange(R)
    assert metrics.multimodality(simplex, np.random.default_rng(0)) == pytest.approx(1 - 1 / R, abs=0.01)
    assert metrics.multimodality(line, np.random.default_rng(0)) == pytest.approx((R * R - 1) / (3 * R), rel=0.03)


def test_r_precision_drops_the_last_partial_group_as_t2m():
    """T2M ranks shuffled groups of 32 (drop_last): with N = 100, three groups and 4 items left out.
    Against an argsort per text row over the same permutation: hit@k if the true motion is among the
    k nearest (Euclidean), MM-Dist the mean true-pair distance over the 96 kept items."""
    rng = np.random.default_rng(5)
    motion = rng.normal(size=(100, 8))
    text = motion + 0.9 * rng.normal(size=(100, 8))
    (r1, r2, r3), mm = metrics.r_precision(text, motion, np.random.default_rng(11))
    groups = np.random.default_rng(11).permutation(100)[:96].reshape(3, 32)
    hits, dists = np.zeros(3), []
    for g in groups:
        d = np.linalg.norm(text[g][:, None] - motion[g][None], axis=-1)            # (32 texts, 32 motions)
        order = np.argsort(d, axis=1)
        for i in range(32):
            hits += [i in order[i, :k] for k in (1, 2, 3)]
            dists.append(d[i, i])
    assert (r1, r2, r3) == pytest.approx(tuple(hits / 96), abs=1e-12)
    assert mm == pytest.approx(np.mean(dists), rel=1e-9)
    assert 0.1 < r1 < r3 < 0.95                                                      # neither chance nor perfect

def test_confidence_interval():
    c = metrics.confidence([1.0, 2.0, 3.0, 4.0])
    assert c["mean"] == 2.5 and abs(c["ci"] - 1.96 * np.std([1, 2, 3, 4]) / 2) < 1e-12


def test_memory_meter_counts_known_saved_bytes():
    lin = torch.nn.Linear(100, 100)
    x = torch.randn(10, 100, requires_grad=True)
    with metrics.SavedTensorMeter(lin) as m:
        h = lin(x)            # saves x (4000 B); the weight is a parameter: excluded
        y = h.sin()           # saves h (4000 B)
        z = (x * x).sum()     # saves x twice: already counted
        loss = y.sum() + z
    assert m.peak == 2 * 10 * 100 * 4
    assert m.current == 8000
    loss.backward()
    del loss, y, z, h
    assert m.current == 0                                                   # frees tracked


def test_memory_meter_grows_with_a_kept_graph_and_not_with_detached_steps():
    lin = torch.nn.Linear(64, 64)
    def chain(T, detach):
        x = torch.randn(8, 64)
        with metrics.SavedTensorMeter(lin) as m:
            for _ in range(T):
                x = torch.tanh(lin(x.detach() if detach else x))
                if detach:
                    x.sum().backward()
            if not detach:
                x.sum().backward()
        return m.peak
    # kept chain: x_0 plus each tanh output (which is also the next layer's input, counted once)
    step_bytes = 8 * 64 * 4
    assert chain(2, False) == 3 * step_bytes and chain(10, False) == 11 * step_bytes   # O(T)
    assert chain(10, True) == chain(2, True) == 2 * step_bytes                         # O(1): one step at a time


@pytest.fixture(scope="module")
def tiny_evaluator(tiny_data, tmp_path_factory):
    cfg = metrics.EvaluatorConfig(data=tiny_data, out=str(tmp_path_factory.mktemp("ev") / "ev.pt"),
                                  **metrics.EVALUATOR_PRESETS["tiny"])
    metrics.train_evaluator(cfg)
    return metrics.load_evaluator(cfg.out)


@pytest.mark.filterwarnings("ignore:R-Precision over")                     # the val Real row of a tiny split
def test_evaluator_training_resumes_exactly(tiny_data, tmp_path, monkeypatch, capsys, crash_on):
    """Stopped at step 12 (state saved at 10, mid-epoch), then --resume: the same weights as a run never stopped
    (the batches, crops, the margin loss's numpy draws, the cosine schedule and AdamW's moments continue)."""
    cfg = metrics.EvaluatorConfig(data=tiny_data, out=str(tmp_path / "ev.pt"),
                                  **{**metrics.EVALUATOR_PRESETS["tiny"], "steps": 14, "ckpt_every": 5})
    metrics.train_evaluator(dataclasses.replace(cfg, out=str(tmp_path / "whole.pt")))
    real = metrics.margin_loss
    monkeypatch.setattr(metrics, "margin_loss", crash_on(real, 13))
    with pytest.raises(KeyboardInterrupt):
        metrics.train_evaluator(dataclasses.replace(cfg, resume=True))    # nothing to resume yet: said, then afresh
    assert f"--resume: no {cfg.out}.part to resume" in capsys.readouterr().out
    part = common.load_checkpoint(cfg.out + ".part", "evaluator-state")
    assert part["step"] == 10
    monkeypatch.setattr(metrics, "margin_loss", real)
    torch.save({k: v for k, v in part.items() if k != "sched"}, cfg.out + ".part")     # an entry missing: named
    with pytest.raises(common.CheckpointError, match=r"ev\.pt\.part: incomplete, or written by other code \(KeyError"):
        metrics.train_evaluator(dataclasses.replace(cfg, resume=True))
    torch.save(part, cfg.out + ".part")
    metrics.train_evaluator(dataclasses.replace(cfg, resume=True))
    got, whole = (common.load_checkpoint(p, "evaluator")["model"] for p in (cfg.out, str(tmp_path / "whole.pt")))
    assert all(torch.equal(got[k], whole[k]) for k in whole) and not os.path.exists(cfg.out + ".part")
    ck = common.load_checkpoint(cfg.out)
    torch.save({k: v for k, v in ck.items() if k != "words"}, tmp_path / "no_words.pt")
    with pytest.raises(common.CheckpointError, match=r"no_words\.pt: incomplete, or written by other code \(KeyError"):
        metrics.load_evaluator(str(tmp_path / "no_words.pt"))


@pytest.mark.filterwarnings("ignore:R-Precision over")                     # tiny sets: one small group
def test_tiny_evaluator_retrieves_above_chance(tiny_evaluator, tiny_data):
    n = len(data.MotionTextDataset(tiny_data, "test"))
    assert n < 32                                                              # the tiny test split: one group
    real = metrics.evaluate_real(tiny_evaluator, tiny_data, replications=3, seed=0)
    assert real["R1"]["mean"] > 3 / n                                         # chance is 1/n (24 items: 1/24)
    assert real["R3"]["mean"] > 0.3 and real["FID"]["mean"] < 1.0


def test_motion_stats_reads_each_part_of_the_vector_and_ignores_padding():
    """A ramp x_f = a f + c in one part gives 'change' |a| there and 0 elsewhere; padded frames
    (here 1e6) never count; the parts of 263 dims are 4 + 63 + 126 + 66 + 4 (22 joints)."""
    B, T, D, L = 2, 10, 263, 7
    f = torch.arange(T, dtype=torch.float32)[None, :, None]
    x = torch.zeros(B, T, D)
    x[..., 4:67] = 0.5 * f + 1.0                                           # positions: ramp of slope 0.5
    x[..., 259:] = -2.0                                                    # feet: constant
    x[:, L:] = 1e6
    mask = torch.arange(T)[None] < torch.tensor([L, L])[:, None]
    s = diagnostics.motion_stats(x, mask)
    assert list(s) == ["root", "positions", "rotations", "velocities", "feet"]
    assert s["positions"][1] == pytest.approx(0.5) and s["positions"][0] == pytest.approx(np.mean(0.5 * np.arange(L) + 1))
    assert s["feet"] == pytest.approx((2.0, 0.0)) and s["rotations"] == (0.0, 0.0) and s["root"] == (0.0, 0.0)


def test_cluster_bootstrap_matches_the_closed_form_and_is_wider_than_the_iid_one():
    """K clusters of m items sharing a cluster effect: the bootstrap sd of the mean over resampled
    clusters is sd(cluster means) / sqrt(K) (plug-in, ddof 0), wider than the i.i.d. sd / sqrt(K m)."""
    rng = np.random.default_rng(0)
    K, m = 200, 4
    x = np.repeat(rng.normal(size=K), m) + 0.5 * rng.normal(size=K * m)    # K m items
    clusters = np.repeat(np.arange(K), m)
    totals = metrics.cluster_resample(np.stack([x, np.ones_like(x)], 1), clusters, draws=4000, seed=1)
    means = totals[:, 0] / totals[:, 1]                                    # every draw holds K m items
    closed = x.reshape(K, m).mean(1).std() / np.sqrt(K)
    assert means.std() == pytest.approx(closed, rel=0.06)
    assert closed > 1.5 * x.std() / np.sqrt(K * m)
    assert [metrics.source_motion(n) for n in ("000041", "M000041", "M000041[20:80]")] == ["000041"] * 3


@pytest.mark.filterwarnings("ignore:R-Precision over")                     # tiny sets: one small group
def test_compare_is_paired_and_matches_evaluate(build_tiny, tiny_evaluator, tiny_data):
    """A generator against itself differs by exactly 0 on every resampling (the draws are shared),
    and each side's R1 is evaluate()'s mean over the same replications."""
    gen, _ = build_tiny("mdm")
    res = metrics.compare(gen, gen, tiny_evaluator, tiny_data, replications=2, seed=3, draws=200)
    assert res["R1_a"]["value"] == res["R1_b"]["value"]
    assert res["R1_diff"] == {"value": 0.0, "lo": 0.0, "hi": 0.0}
    row = metrics.evaluate(gen, tiny_evaluator, tiny_data, replications=2, seed=3)
    assert res["R1_a"]["value"] == pytest.approx(row["R1"]["mean"], abs=1e-12)
    assert res["sources"] * 2 <= res["items"]                               # clips come with their mirrors


@pytest.mark.filterwarnings("ignore:R-Precision over")                     # tiny sets: one small group
def test_compare_counts_fixed_broken_and_what_a_second_model_cannot_see(build_tiny, tiny_evaluator, tiny_data):
    """fixed - broken is the change in hits; a second model that retrieves every item sees every 'gap'
    item (evaluator: real retrieved, a's sample not) as retrieved, one that retrieves none sees none.
    Text i embeds as e_i; motion i as e_i (its own text is the nearest: every item retrieved) or as
    -e_i (its text is 2 from it and sqrt 2 from every other motion: none retrieved)."""
    (gen_a, _), (gen_b, _) = build_tiny("mdm", seed=0), build_tiny("mdm", seed=1)
    res = {}
    for name, sign in (("all", 1.0), ("none", -1.0)):
        second = lambda caps, feats, lengths, s=sign: (np.eye(len(caps)), s * np.eye(len(caps)))  # noqa: E731
        res[name] = metrics.compare(gen_a, gen_b, tiny_evaluator, tiny_data, replications=2, seed=3, draws=50,
                                    second=second)
    n = res["all"]["counts"]
    assert n["fixed"] - n["broken"] == pytest.approx(res["all"]["R1_diff"]["value"] * n["kept"], abs=1e-9)
    assert n["gap"] > 0 and n["gap, second retrieves a"] == n["gap"]
    assert res["none"]["counts"]["gap, second retrieves a"] == 0 and res["none"]["counts"]["gap"] == n["gap"]


def test_compare_prints_the_difference_where_the_relative_interval_is_undefined():
    """A resample with none of a's hits makes b/a - 1 infinite or NaN (a tiny split, a weak a): the line
    then gives the absolute difference's interval instead of '[+nan%, +nan%]'."""
    res = {"R1_change": {"value": 0.2, "lo": -0.1, "hi": 0.5}, "R1_diff": {"value": 0.01, "lo": -0.02, "hi": 0.04}}
    assert metrics.r1_change(res) == "+20.0% [-10.0%, +50.0%]"
    res["R1_change"] = {"value": -1 / 3, "lo": float("nan"), "hi": float("inf")}
    line = metrics.r1_change(res)
    assert "nan" not in line and "inf" not in line and line.startswith("-33.3% (no interval")
    assert line.endswith("difference +0.010 [-0.020, +0.040]")


def test_smoothing_in_time_keeps_a_ramp_and_the_padding_and_damps_jitter():
    """A Gaussian low-pass leaves a linear ramp unchanged away from the clip's ends (the kernel is
    symmetric), leaves padding frames alone, and shrinks frame-to-frame noise."""
    T, n = 40, 30
    ramp = np.tile(np.arange(T, dtype=np.float32)[:, None], (1, 3))
    ramp[n:] = 99.0                                                          # padding after `n` real frames
    jitter = np.random.default_rng(0).normal(size=(T, 3)).astype(np.float32)
    out = diagnostics.smooth_in_time(np.stack([ramp, jitter]), [n, T], sigma=1.5)
    assert np.allclose(out[0, 8:n - 8], ramp[8:n - 8], atol=1e-4) and (out[0, n:] == 99.0).all()
    assert np.abs(np.diff(out[1], axis=0)).mean() < 0.5 * np.abs(np.diff(jitter, axis=0)).mean()


@pytest.mark.filterwarnings("ignore:R-Precision over")                     # tiny sets: one small group
def test_probe_rows_are_evaluates_and_an_identity_vae_reconstructs_the_real_row(build_tiny, tiny_evaluator,
                                                                                tiny_data):
    """probe() scores on evaluate()'s draws, so its "samples" row is evaluate()'s; through a VAE that
    encodes and decodes exactly, the "reconstruction" row is the "real" row."""
    gen, _ = build_tiny("mld")
    decode, D = gen.decode, gen.mean.shape[0]
    gen.encode = lambda x, mask: (x, torch.zeros_like(x))                  # an exact VAE for features (N, T, D),
    gen.decode = lambda z, mask: (z / gen.latent_scale * mask[..., None] if z.shape[-1] == D
                                  else decode(z, mask))                    # the real decoder for sampled latents
    rows = diagnostics.probe(gen, tiny_evaluator, tiny_data, replications=2, seed=3)
    row = metrics.evaluate(gen, tiny_evaluator, tiny_data, replications=2, seed=3)
    for k in ("R1", "R3", "FID", "MMDist"):
        assert rows["samples"][k]["mean"] == pytest.approx(row[k]["mean"], abs=1e-9)
    assert rows["reconstruction"]["R1"] == rows["real"]["R1"]
    assert rows["reconstruction"]["MMDist"]["mean"] == pytest.approx(rows["real"]["MMDist"]["mean"], rel=1e-5)
    assert rows["reconstruction"]["FID"]["mean"] < 1e-3


@pytest.mark.filterwarnings("ignore:R-Precision over")
def test_a_stopped_evaluation_resumes_with_the_numbers_of_one_never_stopped(build_tiny, tiny_evaluator, tiny_data,
                                                                            tmp_path, monkeypatch, crash_on, capsys):
    """`metrics.py eval --json F` keeps each finished replication in F.part; stopped in its third replication and
    resumed, it runs only that one and ends with the row of an evaluation never stopped (each replication is
    seeded on its own). A part of other settings is refused, and --resume without --json is said."""
    gen, _ = build_tiny("mdm")
    args = dict(replications=3, seed=3, device="cpu", steps=3)
    whole = metrics.evaluate(gen, tiny_evaluator, tiny_data, **args)
    part = (str(tmp_path / "rows.json.part"), {"generator": "g.pt:1:2", "seed": 3})
    real = metrics.embed_split
    monkeypatch.setattr(metrics, "embed_split", crash_on(real, 3))
    with pytest.raises(KeyboardInterrupt):
        metrics.evaluate(gen, tiny_evaluator, tiny_data, **args, part=part)
    with open(part[0]) as f:
        assert len(json.load(f)["rows"]["R1"]) == 2
    calls = []
    monkeypatch.setattr(metrics, "embed_split", lambda *a, **k: calls.append(a[3]) or real(*a, **k))
    assert metrics.evaluate(gen, tiny_evaluator, tiny_data, **args, part=part) == whole
    assert calls == [5] and "after 2 replication(s)" in capsys.readouterr().out      # seed 3 + r for r = 2
    with pytest.raises(common.CheckpointError, match=r"rows\.json\.part: --resume with settings other than the "
                                                     r"saved run's \(seed: saved 3, asked 4\)"):
        metrics.evaluate(gen, tiny_evaluator, tiny_data, **args, part=(part[0], {**part[1], "seed": 4}))
    monkeypatch.setattr(sys, "argv", ["metrics.py", "eval", "--generator", "g", "--evaluator", "e", "--data", "d",
                                      "--resume"])
    with pytest.raises(common.InputError, match="--resume needs --json"):
        metrics.main()


def test_metrics_cli_refuses_empty_counts_before_any_work(tmp_path):
    """`eval --replications 0` printed empty rows (rc 0); now one line and exit 2, before a file is read."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for script, args, msg in (
            ("metrics.py", ["eval", "--generator", "g", "--evaluator", "e", "--data", "d", "--replications", "0"],
             "--replications 0: must be >= 1"),
            ("diagnostics.py", ["probe", "--generator", "g", "--evaluator", "e", "--data", "d", "--sigma", "0"],
             "--sigma 0.0: must be in 0.01..200.0")):
        r = subprocess.run([sys.executable, os.path.join(here, script), *args], capture_output=True, text=True,
                           cwd=tmp_path)
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr


@pytest.mark.filterwarnings("ignore:R-Precision over")
def test_a_held_out_folder_with_the_benchmarks_statistics_is_scored_and_unknown_words_are_said(tiny_data, build_tiny,
                                                                                              tmp_path, capsys,
                                                                                              monkeypatch):
    """The README's larger held-out set: fresh clips of another seed with the benchmark's Mean/Std copied in.
    Its own train split makes another vocabulary, so the reuse check (check_same_dataset) refuses the models;
    eval/compare read only the scored split's captions: the Mean must be the benchmark's (else refused), and
    the words a model never saw (read as <unk>) are said, for the generator's words and the evaluator's lemmas.
    `eval --json` writes the rows printed and the machine they were computed on (another CPU rounds otherwise)."""
    held = str(tmp_path / "held")
    synth.write_dataset(held, 40, seed=7)
    for name in ("Mean.npy", "Std.npy"):
        shutil.copy(os.path.join(tiny_data, name), held)
    shutil.copy(os.path.join(held, "all.txt"), os.path.join(held, "val.txt"))
    clip = data.read_split(held, "val")[0]
    with open(os.path.join(held, "texts", f"{clip}.txt"), "a") as f:
        f.write("a person zorbs twice#a/DET person/NOUN zorb/VERB twice/ADV#0.0#0.0\n")   # a word nobody trained on
    gen, _ = build_tiny("mld")
    g = str(tmp_path / "g.pt")
    common.atomic_save(models.generator_checkpoint(gen), g)
    ev_cfg = metrics.EvaluatorConfig(data=tiny_data, out=str(tmp_path / "ev.pt"),
                                     **{**metrics.EVALUATOR_PRESETS["tiny"], "steps": 2})
    metrics.train_evaluator(ev_cfg)
    with pytest.raises(common.InputError, match=r"g\.pt: .*vocabulary differs"):
        data.check_same_dataset(held, g, gen.mean, gen.vocab.itos, data.build_vocab(held).itos)
    capsys.readouterr()
    a = argparse.Namespace(generator=[g, g], evaluator=ev_cfg.out, data=held, split="val")
    gens, ev = metrics.loaded(a, torch.device("cpu"))
    out = capsys.readouterr().out
    seen = {w for name in data.read_split(held, "val") for c, _, _, _ in data.load_captions(held, name)
            for w in data.words(c)}
    unknown = sorted(seen - set(gen.vocab.itos))                      # "zorbs" at least
    assert "zorbs" in unknown and out.count(f"g.pt: {len(unknown)} of the {len(seen)} words") == 2
    assert "ev.pt: " in out and "zorb" in out.split("ev.pt: ")[1] and "zorbs" not in out.split("ev.pt: ")[1]
    rows_json = str(tmp_path / "rows.json")
    with open(rows_json + ".part", "w") as f:
        f.write("a stopped eval's, not resumed")                   # without --resume: dropped, not read
    monkeypatch.setattr(sys, "argv", ["metrics.py", "eval", "--generator", g, "--evaluator", ev_cfg.out, "--data",
                                      held, "--split", "val", "--replications", "1", "--json", rows_json])
    metrics.main()
    assert not os.path.exists(rows_json + ".part")                  # a finished eval leaves no part
    out = capsys.readouterr().out
    with open(rows_json) as f:
        rows = json.load(f)
    assert set(rows) == {"real", "generator", "machine"} and rows["machine"] == common.machine(torch.device("cpu"))
    assert f"generator: {metrics.format_row(rows['generator'])}" in out
    np.save(os.path.join(held, "Mean.npy"), np.load(os.path.join(held, "Mean.npy")) + 1)
    with pytest.raises(common.InputError, match=r"g\.pt: trained on another dataset than .*held \(its Mean\.npy"):
        metrics.loaded(a, torch.device("cpu"))


def test_fid_of_fewer_than_two_motions_is_an_input_error_not_a_sqrtm_failure():
    """A split of one item has no covariance: said as such (scipy's sqrtm failed with 'Internal error -102')."""
    rng = np.random.default_rng(0)
    with pytest.raises(common.InputError, match="FID: 1 and 8 motions"):
        metrics.fid(rng.normal(size=(1, 4)), rng.normal(size=(8, 4)))
