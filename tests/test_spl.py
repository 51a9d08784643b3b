"""spl.py: preference mining (Eq. 13-14) and the KL loss (Eq. 15-17) against hand computations, the
noise-aware reward's inputs, the contrastive form, and a tiny pretrain + SPL run."""
import dataclasses
import json
import math
import os
import shutil

import numpy as np
import pytest
import torch

import common
import data
import models
import spl


def test_mining_finds_retrieval_failures_and_their_best_wrong_motion():
    S = torch.tensor([[5.0, 1.0, 0.0, 2.0],      # row 0: truth ranked 1st -> not mined
                      [3.0, 2.0, 4.0, 0.0],      # row 1: two wrong motions above the truth (rank 3)
                      [0.0, 9.0, 1.0, 0.5],      # row 2: one wrong motion above (rank 2)
                      [8.0, 7.0, 6.0, 0.0]])     # row 3: three above
    dup = torch.zeros(4, 4, dtype=torch.bool)
    failed, loser = spl.mine_pairs(S, dup, k=2)              # ground truth outside the top-2
    assert failed.tolist() == [False, True, False, True]
    assert loser.tolist()[1] == 2 and loser.tolist()[3] == 0
    dup[3, 0] = True                                          # motion 0's caption says the same as caption 3
    failed, loser = spl.mine_pairs(S, dup, k=2)
    assert failed.tolist()[3] is True and loser.tolist()[3] == 1   # the paraphrase is not a "wrong" motion
    dup[3, 1] = True
    assert spl.mine_pairs(S, dup, k=2)[0].tolist()[3] is False     # only motion 2 is above now: rank 2


def test_spl_loss_is_the_kl_of_eq_17():
    r_w, r_l = torch.tensor([2.0, -1.0, 0.3]), torch.tensor([3.0, 0.5, 0.3])
    failed = torch.tensor([True, True, False])
    loss = spl.spl_loss(r_w, r_l, failed)
    # Q = (1, 0): KL(Q || P) = -log P_w = log(1 + exp(r_l - r_w)); unmined rows have x_l = x_w: P = Q, KL = 0
    assert loss[0].item() == pytest.approx(math.log(1 + math.exp(1.0)), rel=1e-6)
    assert loss[1].item() == pytest.approx(math.log(1 + math.exp(1.5)), rel=1e-6)
    assert loss[2].item() == pytest.approx(0.0, abs=1e-7)
    r_w = r_w.clone().requires_grad_(True)
    spl.spl_loss(r_w, r_l, failed).sum().backward()
    # d/dr_w log(1 + e^(r_l - r_w)) = -sigmoid(r_l - r_w): the winner's reward is pushed up
    assert r_w.grad[0].item() == pytest.approx(-1 / (1 + math.exp(-1.0)), rel=1e-5) and r_w.grad[2] == 0


def test_same_meaning_ignores_subjects_and_articles():
    dup = spl.same_meaning(["a person waves the left hand", "someone waves left hand", "a man waves the right hand"])
    assert dup[0, 1] and not dup[0, 2] and dup[2, 2]


def test_reward_is_noise_aware_and_differentiable_in_x_only_where_asked(build_tiny, tiny_data):
    _, reward = build_tiny()
    ds = data.MotionTextDataset(tiny_data, "val", deterministic=True)
    b = data.collate([ds[i] for i in range(4)])
    x, lengths, caps = b["motion"], b["lengths"], b["captions"]
    clean = reward(x, lengths, caps)
    assert torch.allclose(clean, reward(x, lengths, caps, torch.ones(4)))       # alpha_bar = 1 is clean
    assert not torch.allclose(clean, reward(x, lengths, caps, torch.full((4,), 0.3)))   # the noise token matters
    assert (clean.abs() <= reward.tau + 1e-4).all()                              # tau * cosine
    x = x.clone().requires_grad_(True)
    reward(x, lengths, caps).sum().backward()
    assert x.grad.abs().sum() > 0                                                # dR/dx for the fine-tuners
    assert all(p.grad is None for p in reward.parameters())                     # phi frozen (requires_grad off)
    assert (x.grad[0, lengths[0]:] == 0).all()                                   # padding does not matter


def test_contrastive_form_is_log_p_of_the_caption_among_the_bank(build_tiny, tiny_data):
    _, reward = build_tiny()
    ds = data.MotionTextDataset(tiny_data, "val", deterministic=True)
    b = data.collate([ds[i] for i in range(3)])
    bank_caps, bank_emb = reward.caption_bank(tiny_data, n=16)
    lp = reward.log_prob(b["motion"], b["lengths"], b["captions"], (bank_caps, bank_emb))
    m, c = reward.motion_embed(b["motion"], b["lengths"]), reward.text_embed(b["captions"])
    logits = reward.tau * torch.cat([(m * c).sum(-1, keepdim=True), m @ bank_emb.T], 1)
    assert torch.allclose(lp, torch.log_softmax(logits, 1)[:, 0], atol=1e-5) and (lp < 0).all()
    # the caption itself in the bank is not a competitor: log p stays the same (not capped at log 1/2)
    for i, cap in enumerate(b["captions"]):
        with_own = (bank_caps + [cap], torch.cat([bank_emb, c[i:i + 1]]))
        lp_i = reward.log_prob(b["motion"][i:i + 1], b["lengths"][i:i + 1], [cap], with_own)
        assert torch.allclose(lp_i, lp[i:i + 1], atol=1e-5)


def test_tiny_pretrain_then_spl_logs_the_failure_ratio(tiny_data, tmp_path):
    pre = spl.RewardConfig(data=tiny_data, out=str(tmp_path / "pre.pt"), **{**spl.PRESETS["tiny"], "steps": 20})
    spl.train(pre, "pretrain")
    cfg = spl.RewardConfig(data=tiny_data, init=pre.out, out=str(tmp_path / "spl.pt"),
                           **{**spl.PRESETS["tiny"], "steps": 12, "batch_size": 16, "spl_k": 1})
    spl.train(cfg, "spl")
    ck = common.load_checkpoint(cfg.out, "reward")
    assert ck["mode"] == "spl" and ck["log"] and 0 < ck["log"][0]["failure_ratio"] < 1
    assert ck["log"][-1]["step"] == 12                                           # the last, partial epoch too
    assert common.load_checkpoint(pre.out, "reward")["log"][-1]["step"] == 20      # pretraining logs its epochs
    before, after = spl.load_reward(pre.out), spl.load_reward(cfg.out)
    assert any(not torch.equal(a, b) for a, b in zip(before.parameters(), after.parameters()))
    spl.main(["bench", "--reward", pre.out, cfg.out, "--data", tiny_data, "--json", str(tmp_path / "bench.json")])
    with open(tmp_path / "bench.json") as f:                  # each reward's rows, and the machine they came from
        bench = json.load(f)
    assert list(bench["rewards"]) == [pre.out, cfg.out] and bench["machine"] == common.machine(torch.device("cpu"))
    with pytest.raises(common.CheckpointError, match="missing.pt: checkpoint not found"):
        spl.train(spl.RewardConfig(data=tiny_data, init=str(tmp_path / "missing.pt"), out=str(tmp_path / "x.pt"),
                                   **spl.PRESETS["tiny"]), "spl")
    other = tmp_path / "other"                                            # the same clips, other statistics
    shutil.copytree(tiny_data, other)
    np.save(other / "Mean.npy", np.load(other / "Mean.npy") + 0.5)
    with pytest.raises(common.InputError, match=r"--init .*pre\.pt: trained on another dataset than .*other"):
        spl.train(dataclasses.replace(cfg, data=str(other), out=str(tmp_path / "y.pt")), "spl")
    assert not os.path.exists(tmp_path / "y.pt")
    ck = common.load_checkpoint(pre.out)
    torch.save({**ck, "config": {**ck["config"], "width": 64}}, tmp_path / "foreign.pt")   # a config of other code
    with pytest.raises(common.CheckpointError, match=r"foreign\.pt: incomplete, or written by other code \(TypeError"):
        spl.load_reward(str(tmp_path / "foreign.pt"))


@pytest.mark.parametrize("mode", ["pretrain", "spl"])
def test_resume_continues_a_stopped_reward_run_exactly(tiny_data, tmp_path, monkeypatch, capsys, crash_on, mode):
    """Stopped at step 13 (state saved at 10, mid-epoch), then --resume: the same weights and epoch log as a run
    never stopped (the batches, crops, noise draws and optimizer moments continue); <out>.part is removed when
    the run finishes; a resume with another setting is refused, naming it."""
    init = str(tmp_path / "init.pt")
    if mode == "spl":
        spl.train(spl.RewardConfig(data=tiny_data, out=init, **{**spl.PRESETS["tiny"], "steps": 4}), "pretrain")
    over = {"steps": 16, "ckpt_every": 5} | ({"batch_size": 48, "spl_k": 1} if mode == "spl" else {})  # 4 or 2 a epoch
    cfg = spl.RewardConfig(data=tiny_data, out=str(tmp_path / "r.pt"), init=init if mode == "spl" else "",
                           **{**spl.PRESETS["tiny"], **over})
    spl.train(dataclasses.replace(cfg, out=str(tmp_path / "whole.pt")), mode)
    real = spl.mine_pairs
    monkeypatch.setattr(spl, "mine_pairs", crash_on(real, 14))
    with pytest.raises(KeyboardInterrupt):
        spl.train(dataclasses.replace(cfg, resume=True), mode)           # nothing to resume yet: said, then afresh
    assert f"--resume: no {cfg.out}.part to resume" in capsys.readouterr().out
    assert common.load_checkpoint(cfg.out + ".part", "reward-state")["step"] == 10 and not os.path.exists(cfg.out)
    monkeypatch.setattr(spl, "mine_pairs", real)
    with pytest.raises(common.CheckpointError, match=r"r.pt.part: --resume with settings .*lr: saved 0.002, asked 0.001"):
        spl.train(dataclasses.replace(cfg, resume=True, lr=1e-3), mode)
    spl.train(dataclasses.replace(cfg, resume=True), mode)
    got, whole = common.load_checkpoint(cfg.out, "reward"), common.load_checkpoint(str(tmp_path / "whole.pt"), "reward")
    assert all(torch.equal(got["model"][k], whole["model"][k]) for k in whole["model"])
    assert got["log"] == whole["log"] and len(got["log"]) >= 4                   # epochs across the stop, logged once
    assert not os.path.exists(cfg.out + ".part")


def test_spl_gradients_reach_phi_and_only_phi(build_tiny, tiny_data):
    gen, reward = build_tiny("mdm")
    reward.requires_grad_(True)
    ds = data.MotionTextDataset(tiny_data, "val", deterministic=True)
    b = data.collate([ds[i] for i in range(6)])
    S = reward.scores(b["motion"], b["lengths"], b["captions"])          # (6, 6) Eq. 11
    failed, loser = spl.mine_pairs(S.detach(), spl.same_meaning(b["captions"]), k=1)
    failed[0] = True                                                      # at least one mined pair
    rows = torch.arange(6)
    spl.spl_loss(S[rows, rows], S[rows, loser], failed).sum().backward()
    assert reward.log_tau.grad is not None and reward.x_in.weight.grad.abs().sum() > 0
    assert reward.text_out.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in gen.parameters())                 # the generator is not involved


def test_bench_scores_a_generators_samples_in_the_rewards_normalisation(build_tiny, tiny_data):
    """A 'generator' that replays the real test motions, in a normalisation of its own, must get the
    'clean' row: bench's samples rows convert generator features into the reward's space."""
    _, reward = build_tiny()
    ds = data.MotionTextDataset(tiny_data, "test", deterministic=True)
    real = data.collate([ds[i] for i in range(len(ds))])["motion"] * reward.std + reward.mean   # raw features

    class Replay:
        mean, std = reward.mean + 0.5, reward.std * 2.0

        def sample(self, captions, lengths, generator=None):
            assert len(captions) == len(real)
            return (real - self.mean) / self.std

    res = spl.bench(reward, tiny_data, ts=(0,), samples={"replay": Replay()})
    assert set(res) == {"clean", "samples of replay"}
    assert res["samples of replay"] == pytest.approx(res["clean"], abs=1e-6)


def test_retrieval_embeddings_read_unnormalised_features(build_tiny, tiny_data):
    _, reward = build_tiny()
    ds = data.MotionTextDataset(tiny_data, "val", deterministic=True)
    b = data.collate([ds[i] for i in range(4)])
    raw = (b["motion"] * reward.std + reward.mean) * b["mask"][..., None]        # padding is zero, as sampled
    text, motion = reward.retrieval_embeddings(b["captions"], raw, b["lengths"])
    assert np.allclose(text, reward.text_embed(b["captions"]).numpy(), atol=1e-6)
    assert np.allclose(motion, reward.motion_embed(b["motion"], b["lengths"]).numpy(), atol=1e-5)


def test_cli_flags_win_over_presets_even_at_their_default(monkeypatch):
    """`--steps 1500` under --preset tiny, and `spl --batch-size 64 --lr 5e-4` (the dataclass defaults), are
    what was asked: the preset and SPL's defaults fill only the flags not given."""
    seen = {}
    monkeypatch.setattr(spl, "train", lambda cfg, mode: seen.update(cfg=cfg, mode=mode))
    spl.main(["pretrain", "--preset", "tiny", "--steps", "1500"])
    assert (seen["cfg"].steps, seen["cfg"].d_model, seen["cfg"].batch_size) == (1500, 32, 32)
    spl.main(["spl", "--init", "r.pt", "--batch-size", "64", "--lr", "5e-4"])
    assert (seen["mode"], seen["cfg"].batch_size, seen["cfg"].lr, seen["cfg"].steps) == ("spl", 64, 5e-4, 150)
    spl.main(["spl", "--init", "r.pt", "--preset", "tiny"])                    # tiny: SPL at the tiny sizes
    assert (seen["cfg"].batch_size, seen["cfg"].steps) == (32, 60)


def test_spl_training_switches_rows_between_the_preference_and_the_contrastive_loss(tiny_data, tmp_path, monkeypatch):
    """Algorithm 2 / App. B.4: in a batch (the retrieval pool), a caption whose motion is outside its top-k
    is mined and gets w * KL(Q || P) = w * log(1 + e^(R(x_l) - R(x_w))) (Eq. 15-17, x_l its best-scoring wrong
    motion), every other row its symmetric InfoNCE term. train()'s logged loss over two steps is recomputed
    here from the score matrices it made (float64; own ranking, paraphrase masking and log-sum-exp)."""
    pre = spl.RewardConfig(data=tiny_data, out=str(tmp_path / "pre.pt"), **{**spl.PRESETS["tiny"], "steps": 1})
    spl.train(pre, "pretrain")                                                   # an (almost) untrained init
    seen, scores = [], spl.Reward.scores

    def spy(self, x, lengths, captions, alpha_bar=None):
        S = scores(self, x, lengths, captions, alpha_bar)
        seen.append((S.detach().double().numpy(), spl.same_meaning(captions).numpy()))
        return S
    monkeypatch.setattr(spl.Reward, "scores", spy)
    k, w = 4, 2.5
    cfg = spl.RewardConfig(data=tiny_data, init=pre.out, out=str(tmp_path / "spl.pt"),
                           **{**spl.PRESETS["tiny"], "steps": 2, "batch_size": 16, "spl_k": k, "spl_weight": w})
    spl.train(cfg, "spl")
    log = common.load_checkpoint(cfg.out, "reward")["log"]
    assert len(log) == 1 and len(seen) == 2                                      # one epoch row, two steps
    lse = lambda v: v.max() + np.log(np.exp(v - v.max()).sum())                   # noqa: E731
    losses = []
    for S, dup in seen:
        B = len(S)
        wrong = [[j for j in range(B) if j != i and not dup[i, j]] for i in range(B)]   # paraphrases are not wrong
        contrast = np.array([0.5 * (lse(S[i, [i] + wrong[i]]) + lse(S[[i] + wrong[i], i]) - 2 * S[i, i])
                             for i in range(B)])                                 # dup is symmetric
        failed = np.array([sum(S[i, j] > S[i, i] for j in wrong[i]) >= k for i in range(B)])
        pref = np.array([np.log1p(np.exp(max(S[i, j] for j in wrong[i]) - S[i, i])) for i in range(B)])
        assert failed.any() and not failed.all()                                 # both kinds of rows in the batch
        losses.append(np.where(failed, w * pref, contrast).mean())
        assert abs(losses[-1] - contrast.mean()) > 0.1                          # plain InfoNCE would differ
    assert log[0]["loss"] == pytest.approx(np.mean(losses), rel=1e-5)


def test_noisy_replaces_a_fraction_p_of_the_motions_by_x_t_and_labels_the_rest_clean():
    """Noise-aware pretraining (Sec. 4.2): each motion, with probability p, becomes x_t = sqrt(ab_t) x +
    sqrt(1 - ab_t) eps, t ~ U[0, max_t], padding kept at 0, and is labelled with its ab_t; the others are
    returned untouched and labelled clean, alpha_bar exactly 1 (the reward's 'clean' noise token)."""
    sched = models.DDIMScheduler("cosine", "sample")

    class Recorder:                                  # the scheduler, recording the noise and steps it is given
        alpha_bar = sched.alpha_bar

        def __init__(self):
            self.calls = []

        def add_noise(self, x0, eps, t):
            self.calls.append((eps, t))
            return sched.add_noise(x0, eps, t)

    torch.manual_seed(0)
    B, T, D, max_t = 400, 12, 5, 300
    x = torch.randn(B, T, D)
    mask = torch.arange(T)[None] < torch.randint(4, T + 1, (B,))[:, None]
    x = x * mask[..., None]
    for p, lo, hi in ((0.0, 0, 0), (0.3, 0.25 * B, 0.35 * B), (1.0, B, B)):
        rec = Recorder()
        out, ab = spl.noisy(x, mask, max_t, p, rec)
        clean = (out == x).flatten(1).all(1)
        assert lo <= (~clean).sum() <= hi                                          # about p B noised
        assert (ab[clean] == 1.0).all() and (ab[~clean] < 1).all()
        (eps, t), = rec.calls
        t = torch.as_tensor(t).expand(B)
        assert 0 <= t.min() and t.max() <= max_t
        want = (sched.alpha_bar[t].sqrt()[:, None, None] * x + (1 - sched.alpha_bar[t]).sqrt()[:, None, None] * eps)
        want = want * mask[..., None]
        assert torch.allclose(out[~clean], want[~clean], atol=1e-6)
        assert torch.equal(ab[~clean], sched.alpha_bar[t][~clean])                 # labelled with its own t
        if p == 1.0:
            assert abs(eps.std().item() - 1) < 0.02 and t.float().std() > 0.2 * max_t   # eps ~ N(0, I), t spread


def test_the_bench_table_keeps_its_columns_under_a_long_checkpoint_name():
    """Each row's numbers end where the header's column names end, whatever the longest row name."""
    row = {f"{p} {d} {c}": 12.5 for p in ("bs32", "all") for d in ("t2m", "m2t") for c in ("R@1", "R@2", "R@3", "R@5", "R@10")}
    lines = spl.format_bench({"clean": row, "samples of runs/synth/a_checkpoint_with_a_long_name.pt": row}).splitlines()
    assert len(lines) == 12 and len({len(ln) for ln in lines}) == 1


def test_the_cli_refuses_an_out_that_is_the_init_and_an_init_that_pretrain_would_ignore(tiny_data, tmp_path,
                                                                                      monkeypatch):
    """`spl --init r.pt --out r.pt` would train over its own starting point; `pretrain --init` starts from random
    weights whatever --init says (it used to be ignored in silence). Both refused before any work."""
    r = str(tmp_path / "r.pt")
    torch.save({"kind": "reward"}, r)
    for cmd, why in ((["spl", "--init", r, "--out", r], r"--out .*r\.pt: the same file as --init"),
                     (["pretrain", "--init", r, "--out", str(tmp_path / "p.pt")], r"--init .*r\.pt: pretrain starts")):
        monkeypatch.setattr("sys.argv", ["spl.py", *cmd, "--data", tiny_data, "--preset", "tiny"])
        with pytest.raises(common.InputError, match=why):
            spl.main()
    assert not (tmp_path / "p.pt").exists()
