"""easytune.py: Corollary 2 against an independent computation, O(1) memory, step vs chain
optimisation, the step schedules of App. A.5, and selection that never reads the test split."""
import copy
import dataclasses
import json
import os
import re
import shutil
import types

import numpy as np
import pytest
import torch

import common
import data
import easytune
import metrics
import pipeline

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


def jittered_ref(gen, scale=0.01, seed=3):
    """A frozen copy of the generator with its denoiser moved a little (a reference that differs from theta),
    sampling on the generator's own timestep grid (as finetune's reference must: see the next-but-one test)."""
    ref = copy.deepcopy(gen).requires_grad_(False)
    ref.scheduler = gen.scheduler
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in ref.denoiser_parameters():
            p.add_(scale * torch.randn_like(p))
    return ref


def test_kl_term_gradient_is_its_closed_form_and_pulls_theta_towards_the_reference(build_tiny, tiny_data):
    """Eq. S1 (here w * mean ||x_{t-1} - x_ref||^2): its gradient is 2 w (x_{t-1} - x_ref) / N . d x_{t-1}/d theta,
    a VJP computed here on a detached copy, and one small SGD step along it brings the tuned step's output
    closer to the frozen reference's by lr |g|^2 / w to first order (a term that only raises the loss, or
    pushes away, fails)."""
    gen, _, theta, cfg = setup(build_tiny, tiny_data)
    cond = gen.condition(CAPS, LENGTHS)
    gen.scheduler.set_timesteps(cfg.sample_steps)
    x_t, t = gen.init_noise(cond, torch.Generator().manual_seed(1)), gen.scheduler.timesteps[1]
    ref, w = jittered_ref(gen), 3.0
    no_reward = lambda feats, *a: 0 * feats.sum((1, 2))           # noqa: E731  the loss is the KL term alone
    loss = easytune.step_loss(gen, no_reward, x_t, t, cond, CAPS, dataclasses.replace(cfg, kl_weight=w), ref=ref)[0]
    g_kl = flat(torch.autograd.grad(loss, theta))
    x_prev, _ = gen.denoise_step(x_t, t, cond, cfg.guidance)
    with torch.no_grad():
        x_ref, _ = ref.denoise_step(x_t, t, cond, cfg.guidance)
    d = x_prev.detach() - x_ref
    assert loss.item() == pytest.approx(w * (d ** 2).mean().item(), rel=1e-5)
    g_ind = flat(torch.autograd.grad(x_prev, theta, grad_outputs=2 * w * d / d.numel()))
    assert g_ind.norm() > 0 and torch.allclose(g_kl, g_ind, rtol=1e-4, atol=1e-9)
    lr = 1e-2
    with torch.no_grad():                                            # theta <- theta - lr * g_kl
        for p, g in zip(theta, torch.split(g_kl, [p.numel() for p in theta])):
            p.sub_(lr * g.view_as(p))
        x_new, _ = gen.denoise_step(x_t, t, cond, cfg.guidance)
    closer = ((d ** 2).mean() - ((x_new - x_ref) ** 2).mean()).item()
    assert closer == pytest.approx(lr * g_ind.norm().item() ** 2 / w, rel=0.1)   # to first order, and > 0


def test_the_kl_reference_takes_the_same_step_so_the_first_update_has_no_kl_term(build_tiny, tiny_data, tmp_path):
    """Eq. S1 compares pi_theta and pi_ref on the same step t -> t-1: at finetune's first update theta is still the
    reference, so the KL term is exactly 0 and the logged loss is -R (sample_steps 4, not the 50 the
    generator was built with: the reference must follow the sampler's grid)."""
    gen, reward = build_tiny("mdm")
    cfg = easytune.resolve(easytune.EasyTuneConfig(backbone="mdm", preset="tiny", kl_weight=1e4, trajectories=1,
                                                   val_every=1, batch_size=4, sample_steps=4, train_steps="first:1"))
    easytune.finetune(gen, reward, cfg, tiny_data, str(tmp_path), str(tmp_path / "log.jsonl"))
    (rec,) = [json.loads(l) for l in open(tmp_path / "log.jsonl")]
    assert rec["loss"] == pytest.approx(-rec["reward"], abs=1e-6)


def test_step_reward_scores_x0_hat_as_clean_motion_or_x_prev_at_its_noise_level(build_tiny, tiny_data):
    """Eq. 12 on MLD (eps-prediction): "x0" hands the reward decode(x0_hat), x0_hat = (x_t - sqrt(1 - ab_t) eps) /
    sqrt(ab_t), as clean motion (alpha_bar None, i.e. t = 0); "noisy" hands it decode(x_{t-1}), x_{t-1} =
    sqrt(ab_{t-1}) x0_hat + sqrt(1 - ab_{t-1}) eps, at alpha_bar_{t-1}. DDIM computed here; the reward is spied."""
    gen, reward = build_tiny("mld")
    reward_fn, calls = easytune.RewardFn(reward, gen, tiny_data), []

    def spy(feats, lengths, captions, alpha_bar=None):
        calls.append((feats.detach(), alpha_bar))
        return reward_fn(feats, lengths, captions, alpha_bar)
    cond, sched = gen.condition(CAPS, LENGTHS), gen.scheduler
    sched.set_timesteps(4)
    t = sched.timesteps[1]
    x_t = gen.init_noise(cond, torch.Generator().manual_seed(2))
    with torch.no_grad():
        eps = gen.guided_output(x_t, t, cond, 2.5)
        ab_t, ab_prev = sched.alpha_bar[t], sched.alpha_bar[t - 1000 // 4]
        x0 = gen.mask_latent((x_t - (1 - ab_t).sqrt() * eps) / ab_t.sqrt(), cond)
        x_prev = gen.mask_latent(ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps, cond)
    assert not torch.allclose(x0, x_prev, atol=1e-2)                 # the two modes score different motions
    for mode, want_x, want_ab in (("x0", x0, None), ("noisy", x_prev, torch.full((2,), ab_prev.item()))):
        calls.clear()
        cfg = easytune.EasyTuneConfig(backbone="mld", reward_input=mode, sample_steps=4, guidance=2.5)
        loss, x_next, _ = easytune.step_loss(gen, spy, x_t, t, cond, CAPS, cfg)
        want_feats = gen.decode(want_x, cond.mask)
        assert len(calls) == 1 and torch.allclose(calls[0][0], want_feats, atol=1e-5)
        assert calls[0][1] is None if want_ab is None else torch.allclose(calls[0][1], want_ab)
        want_loss = -reward_fn(want_feats, cond.lengths, CAPS, want_ab).mean()
        assert loss.item() == pytest.approx(want_loss.item(), rel=1e-5, abs=1e-6)
        assert torch.allclose(x_next, x_prev, atol=1e-5)             # the chain goes on with x_{t-1} either way


def test_sde_sampler_shares_each_steps_noise_with_the_kl_reference_and_the_untrained_steps(build_tiny, tiny_data):
    """MDM's ancestral sampler (eta = 1, an SDE): every step, trained or not, draws its noise from the trajectory's
    generator (one draw per step), and a trained step's KL reference takes that same noise, so x_{t-1} - x_ref =
    mu - mu_ref. Each update's loss, -R(x_{t-1}) + w ||x_{t-1} - x_ref||^2, is recomputed here along a trajectory
    sampled independently (chain optimisation: every step is sampled with the starting theta)."""
    gen, reward_fn, theta, cfg = setup(build_tiny, tiny_data, T=4, method="chain", kl_weight=1.0,
                                       train_steps="last:2", lr=1e-3)
    gen.cfg = dataclasses.replace(gen.cfg, eta=1.0)                  # models.BACKBONE_DEFAULTS["mdm"]
    ref, start = jittered_ref(gen), copy.deepcopy(gen).requires_grad_(False)
    g, g_rep = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    theta_prime = [p.detach().clone().requires_grad_(True) for p in theta]
    recs = easytune.easytune_trajectory(gen, reward_fn, CAPS, torch.tensor(LENGTHS), cfg,
                                        torch.optim.AdamW(theta_prime, lr=cfg.lr), theta, np.random.default_rng(0),
                                        g, theta_prime, ref)
    want = []
    with torch.no_grad():
        cond = start.condition(CAPS, LENGTHS)
        start.scheduler.set_timesteps(4)
        ref.scheduler.set_timesteps(4)
        x = start.init_noise(cond, g_rep)
        for i, t in enumerate(start.scheduler.timesteps):
            noise = torch.randn(x.shape, generator=g_rep)
            x_prev, _ = start.denoise_step(x, t, cond, cfg.guidance, noise=noise)
            if i >= 2:
                x_ref, _ = ref.denoise_step(x, t, cond, cfg.guidance, noise=noise)
                ab = start.scheduler._ab(int(t) - 1000 // 4, cond.lengths).reshape(-1)
                r = reward_fn(start.decode(x_prev, cond.mask), cond.lengths, CAPS, ab).mean().item()
                want.append((i, r, -r + ((x_prev - x_ref) ** 2).mean().item()))
            x = x_prev
    assert [rec["i"] for rec in recs] == [i for i, _, _ in want] == [2, 3]
    assert [rec["reward"] for rec in recs] == pytest.approx([r for _, r, _ in want], rel=1e-5, abs=1e-6)
    assert [rec["loss"] for rec in recs] == pytest.approx([loss for _, _, loss in want], rel=1e-5, abs=1e-6)
    assert torch.equal(g.get_state(), g_rep.get_state())            # x_T and one draw per step, nothing more
    assert 1e-4 < want[0][2] + want[0][1] < 1e-1                     # the KL term is there, and small (mu - mu_ref)


def test_step_schedules_and_weights():
    rng = np.random.default_rng(0)
    assert easytune.trained_steps("all", 50, rng) == list(range(50))
    assert easytune.trained_steps("last:10", 50, rng) == list(range(40, 50))   # the released code
    assert easytune.trained_steps("first:3", 50, rng) == [0, 1, 2]
    pick = easytune.trained_steps("random:7", 50, rng)
    assert len(set(pick)) == 7 and all(0 <= i < 50 for i in pick)
    # App. A.5 with t = T - i: increasing weighs the first step 0.5 and the last (i = T-1) 1.5 - 1/T = 1.48;
    # decreasing the reverse (1.5 for the first step)
    assert easytune.step_weight("increasing", 49, 50) == pytest.approx(1.48)
    assert easytune.step_weight("increasing", 0, 50) == pytest.approx(0.5)
    assert easytune.step_weight("decreasing", 0, 50) == pytest.approx(1.5)
    for bad in ("last:0", "last:x", "some:3", "random:51"):
        with pytest.raises(common.InputError, match="--train-steps"):
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


def test_chain_theta_prime_sums_every_trained_steps_clipped_gradient(build_tiny, tiny_data):
    """Chain optimisation (Alg. 1): theta' collects the update of EVERY trained step, each step's gradient taken
    at the starting theta and clipped to norm `clip` (Table S1's clipping) before it reaches the optimizer. With plain SGD,
    theta' - theta = -lr sum_i g_i min(1, clip / |g_i|), the g_i recomputed here along the sampled trajectory."""
    lr, clip = 1.0, 2.0                                             # lr 1: updates well above float32 rounding
    gen, reward_fn, theta, cfg = setup(build_tiny, tiny_data, T=4, method="chain", lr=lr, clip=clip)
    start = [p.detach().clone() for p in theta]
    theta_prime = [p.detach().clone().requires_grad_(True) for p in theta]
    recs = easytune.easytune_trajectory(gen, reward_fn, CAPS, torch.tensor(LENGTHS), cfg,
                                        torch.optim.SGD(theta_prime, lr=lr), theta, np.random.default_rng(0),
                                        torch.Generator().manual_seed(0), theta_prime)
    moved = flat([p.detach() - s for p, s in zip(theta, start)])    # theta <- theta' at the end
    with torch.no_grad():                                            # back to the starting theta
        for p, s in zip(theta, start):
            p.copy_(s)
    cond = gen.condition(CAPS, LENGTHS)
    gen.scheduler.set_timesteps(4)
    x = gen.init_noise(cond, torch.Generator().manual_seed(0))
    grads = []
    for t in gen.scheduler.timesteps:
        x_prev, _ = gen.denoise_step(x, t, cond, cfg.guidance)      # x is detached: this step's graph only
        ab = gen.scheduler._ab(int(t) - 1000 // 4, cond.lengths).reshape(-1)
        r = reward_fn(gen.decode(x_prev, cond.mask), cond.lengths, CAPS, ab).mean()
        grads.append(flat(torch.autograd.grad(-r, theta)))
        x = x_prev.detach()
    norms = [g.norm().item() for g in grads]
    assert [rec["grad_norm"] for rec in recs] == pytest.approx(norms, rel=1e-4)   # logged before clipping
    assert min(norms) < clip < max(norms)                           # some steps clipped, some not
    want = -lr * sum(g * min(1.0, clip / (n + 1e-6)) for g, n in zip(grads, norms))
    assert torch.allclose(moved, want, rtol=1e-3, atol=1e-6)


def test_random_k_draws_a_new_subset_each_trajectory_shared_by_the_whole_batch(build_tiny, tiny_data):
    """random:K (cf. the randomly sampled step of Eq. S16): the K trained steps are drawn from the run's rng once
    per trajectory (two trajectories, two different subsets: the draws of a replica rng), and at each drawn step
    the whole batch is denoised with gradients on (one update for every item), at no other step."""
    gen, reward_fn, theta, cfg = setup(build_tiny, tiny_data, T=6, train_steps="random:2", lr=1e-5)
    calls = []
    gen.x_out.register_forward_pre_hook(lambda m, a: calls.append((torch.is_grad_enabled(), a[0].shape[0])))
    rng, replica = np.random.default_rng(0), np.random.default_rng(0)
    opt = torch.optim.AdamW(theta, lr=cfg.lr)
    for seed in (0, 1):
        calls.clear()
        recs = easytune.easytune_trajectory(gen, reward_fn, CAPS, torch.tensor(LENGTHS), cfg, opt, theta, rng,
                                            torch.Generator().manual_seed(seed))
        want = sorted(replica.choice(6, 2, replace=False).tolist())
        assert [r["i"] for r in recs] == want == ([3, 4] if seed == 0 else [1, 5])   # different subsets
        assert len(calls) == 2 * 6                                   # a conditional and an unconditional pass
        assert [on for on, _ in calls] == [k // 2 in want for k in range(2 * 6)]    # gradients at those steps only
        assert all(n == len(CAPS) for _, n in calls)


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
        with pytest.raises(common.InputError, match=f"{flag} {value}: must be .*{want}"):   # not a crash minutes later
            cli("--backbone", "mld", flag, value)


def test_selection_rule_needs_a_higher_val_reward_and_a_reward_fid_within_the_guard():
    """better(): a check is selected when its val reward beats the pre-trained model's and every earlier
    selected check's, and its reward-embedding FID is at most 1.25 x the pre-trained model's + 0.05."""
    base = {"val_reward": 0.5, "val_reward_fid": 1.0}                # guard: FID <= 1.3
    s = lambda r, fid: {"val_reward": r, "val_reward_fid": fid}      # noqa: E731
    assert easytune.better(s(0.6, 1.29), None, base)
    assert not easytune.better(s(0.6, 1.31), None, base)            # a better reward, but drifted from real motion
    assert not easytune.better(s(9.0, 2.0), None, base)
    assert not easytune.better(s(0.5, 0.5), None, base)             # strictly higher than the base
    assert not easytune.better(s(0.6, 0.5), s(0.7, 0.5), base)      # and than the best so far
    assert easytune.better(s(0.8, 1.2), s(0.7, 0.5), base)
    assert not easytune.better(s(0.8, 1.31), s(0.7, 0.5), base)     # the guard is the base's, not the best's


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
    best = common.load_checkpoint(str(tmp_path / "best.pt"), "generator")["model"]
    assert all(torch.equal(best[k], before[k]) for k in before)    # best.pt is the pre-trained model
    log = [l for l in open(tmp_path / "log.jsonl")]
    assert len(log) == summary["updates"] == 2 * 3


@pytest.mark.parametrize("method", ["step", "chain"])
def test_resume_after_a_crash_continues_the_run_exactly(build_tiny, tiny_data, tmp_path, monkeypatch, crash_on,
                                                        method):
    """Killed in trajectory 4 (checkpoint at 3), then --resume: the same weights, optimizer moments, log and
    selection state (best so far, val history, checks without improvement; best.pt) as the run that was never
    interrupted (the updates after the checkpoint run again, logged once); a --resume that changes a setting of
    the saved run is refused, naming the setting."""
    cfg = easytune.resolve(easytune.EasyTuneConfig(backbone="mdm", preset="tiny", method=method, kl_weight=1.0,
                                                   trajectories=4, val_every=1, patience=9, batch_size=4,
                                                   sample_steps=3))
    monkeypatch.setattr(easytune, "better", lambda score, best, base: best is None)   # only the first check improves

    def run(out, **over):
        gen, reward = build_tiny("mdm")
        easytune.finetune(gen, reward, dataclasses.replace(cfg, **over), tiny_data, str(out), str(out / "log.jsonl"))
        ck = common.load_checkpoint(str(out / "last.pt"), "easytune")
        ck["best.pt"] = common.load_checkpoint(str(out / "best.pt"), "generator")["model"]
        log = [{k: v for k, v in json.loads(l).items() if k != "peak_saved_mib"} for l in open(out / "log.jsonl")]
        return ck, log

    (a := tmp_path / "once").mkdir(), (b := tmp_path / "killed").mkdir()
    want, want_log = run(a)
    real = easytune.easytune_trajectory
    monkeypatch.setattr(easytune, "easytune_trajectory", crash_on(real, 4))          # dies in the fourth
    with pytest.raises(KeyboardInterrupt):
        run(b)
    assert len(open(b / "log.jsonl").readlines()) == 3 * 3          # three trajectories of 3 updates, then killed
    monkeypatch.setattr(easytune, "easytune_trajectory", real)
    with pytest.raises(common.CheckpointError, match=r"last.pt: --resume with settings .*lr: saved 0.0001, asked 0.001"):
        run(b, resume=True, lr=1e-3)
    got, got_log = run(b, resume=True)
    assert got["trajectory"] == want["trajectory"] == 4 and got["updates"] == want["updates"] == 12
    assert all(torch.equal(got["model"][k], want["model"][k]) for k in want["model"])
    moments = lambda ck: [v for st in ck["optimizer"]["state"].values() for v in st.values()]
    assert all(torch.equal(x, y) for x, y in zip(moments(got), moments(want)))
    assert got_log == want_log
    assert want["best"]["trajectory"] == 1 and want["bad_checks"] == 3 and len(want["history"]) == 5
    assert (got["best"], got["bad_checks"], got["history"]) == (want["best"], want["bad_checks"], want["history"])
    assert all(torch.equal(got["best.pt"][k], want["best.pt"][k]) for k in want["best.pt"])


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
    with pytest.raises(common.InputError, match="clean motion"):
        reward_fn(feats, b["lengths"], b["captions"], alpha_bar=torch.full((4,), 0.5))
    with pytest.raises(common.InputError, match="contrastive"):
        easytune.RewardFn(ev, gen, tiny_data, "contrastive")

    test_path, copy_path, other_path = (str(tmp_path / n) for n in ("evaluator.pt", "renamed.pt", "second.pt"))
    torch.save(ck, test_path), torch.save(ck, copy_path), torch.save(_evaluator(tiny_data, seed=1)[1], other_path)
    with pytest.raises(common.InputError, match="renamed.pt: this is the test evaluator"):
        pipeline.load_reward_model(copy_path, test_path, "cpu")
    assert isinstance(pipeline.load_reward_model(other_path, test_path, "cpu"), metrics.Evaluator)
    torch.save({"kind": "generator"}, str(tmp_path / "gen.pt"))
    with pytest.raises(common.InputError, match="gen.pt: a 'generator' checkpoint"):
        pipeline.load_reward_model(str(tmp_path / "gen.pt"), test_path, "cpu")


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
    ens = pipeline.load_reward_model(f"{a},{b}", str(tmp_path / "test_evaluator.pt"), "cpu")
    ds = data.MotionTextDataset(tiny_data, "val", deterministic=True)
    batch = data.collate([ds[i] for i in range(4)])
    x, ab = batch["motion"] * batch["mask"][..., None], torch.full((4,), 0.3)
    r = easytune.RewardFn(ens, gen, tiny_data)(x, batch["lengths"], batch["captions"], ab)
    each = [easytune.RewardFn(m, gen, tiny_data)(x, batch["lengths"], batch["captions"], ab) for m in (r_a, r_b)]
    assert r.shape == (4,) and torch.allclose(r, (each[0] + each[1]) / 2, atol=1e-5)
    assert not torch.allclose(each[0], each[1], atol=1e-3)                  # two different members
    with pytest.raises(common.InputError, match="an ensemble takes spl.py rewards only"):
        pipeline.load_reward_model(f"{a},{ev}", str(tmp_path / "test_evaluator.pt"), "cpu")
    moved = ck(r_b)
    moved["model"] = {**moved["model"], "mean": moved["model"]["mean"] + 1}
    torch.save(moved, other)
    with pytest.raises(common.InputError, match="trained on one dataset"):
        pipeline.load_reward_model(f"{a},{other}", str(tmp_path / "test_evaluator.pt"), "cpu")
    with pytest.raises(common.InputError, match="not an ensemble"):
        easytune.RewardFn(ens, gen, tiny_data, "contrastive")
    pipeline.check_reward_data(ens, gen, tiny_data, f"{a},{b}")              # trained on tiny_data, as gen is
    with pytest.raises(common.InputError, match=r"other\.pt: trained on another dataset than .* \(its Mean\.npy"):
        pipeline.check_reward_data(pipeline.load_reward_model(other, "unused", "cpu"), gen, tiny_data, other)
    r_a.vocab = data.Vocab(r_a.vocab.itos + ["zebra"])
    with pytest.raises(common.InputError, match=r"a\.pt: trained on another dataset than .* vocabulary differs"):
        pipeline.check_reward_data(r_a, gen, tiny_data, a)


def test_a_stopped_run_stays_stopped_a_fresh_start_drops_the_old_last_pt_and_devices_do_not_mix(
        build_tiny, tiny_data, tmp_path, monkeypatch, capsys):
    """--resume of a run that stopped early trains nothing more (and reports the run's peak memory, not 0); a run
    started afresh never leaves the previous run's last.pt to be resumed into it; a CPU run does not continue a
    CUDA run's noise draws."""
    val_gets_worse(monkeypatch)
    cfg = easytune.resolve(easytune.EasyTuneConfig(backbone="mdm", preset="tiny", trajectories=4, val_every=1,
                                                   patience=1, batch_size=4, sample_steps=3))
    log, last = tmp_path / "log.jsonl", tmp_path / "last.pt"

    def run(**over):
        gen, reward = build_tiny("mdm")
        return easytune.finetune(gen, reward, dataclasses.replace(cfg, **over), tiny_data, str(tmp_path), str(log))
    first = run()
    assert first["trajectories"] == 1 and first["peak_saved_mib"] > 0          # stopped after the first val check
    again = run(resume=True)
    assert again["trajectories"] == 1 and again["updates"] == 3 and len(open(log).readlines()) == 3
    assert again["peak_saved_mib"] == first["peak_saved_mib"]      # the run's meter, not the resumed call's 0

    ck = torch.load(last, weights_only=False)
    torch.save({**ck, "device_type": "cuda"}, last)
    with pytest.raises(common.CheckpointError, match="last.pt: saved on cuda, resuming on cpu"):
        run(resume=True)
    torch.save({k: v for k, v in ck.items() if k != "optimizer"}, last)       # an entry missing: named, not a KeyError
    with pytest.raises(common.CheckpointError, match=r"last\.pt: incomplete, no optimizer; drop --resume"):
        run(resume=True)

    def killed(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(easytune, "easytune_trajectory", killed)
    with pytest.raises(KeyboardInterrupt):
        run()                                                       # afresh, killed before its first check
    assert not last.exists()
    capsys.readouterr()
    with pytest.raises(KeyboardInterrupt):
        run(resume=True)                                            # nothing to resume: said, then afresh
    assert "--resume: no " in capsys.readouterr().out


def test_the_test_split_cache_keeps_rows_of_each_kind_of_device_apart(tmp_path, monkeypatch):
    """A base row sampled on the CPU must not be reused beside a tuned row sampled on a GPU (their noise
    draws differ), nor one from another CPU, thread count or GPU model (they round otherwise): evaluate_cached
    keys on the device's kind and the machine (CPU model and instruction set, threads, GPU, torch) as on the
    file, seed, steps and guidance."""
    calls, gpu = [], ["H100"]
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: gpu[0])    # no GPU here: a named one
    monkeypatch.setattr(pipeline.models, "load_generator", lambda path, device: types.SimpleNamespace(cfg=None))
    monkeypatch.setattr(pipeline.metrics, "evaluate",
                        lambda gen, ev, root, reps, seed, device, steps: calls.append(device.type) or {"R1": len(calls)})
    gen_path, cache = tmp_path / "g.pt", str(tmp_path / "cache.json")
    gen_path.write_bytes(b"weights")
    cfg = easytune.EasyTuneConfig()
    rows = [pipeline.evaluate_cached(str(gen_path), None, "data", cfg, torch.device(d), cache)["R1"]
            for d in ("cpu", "cpu", "cuda", "cpu", "cuda")]
    assert calls == ["cpu", "cuda"] and rows == [1, 1, 2, 1, 2]
    assert pipeline.evaluate_cached(str(gen_path), None, "data", cfg, torch.device("cuda:1"), cache)["R1"] == 2
    gpu[0] = "A100"                                                   # another GPU model: evaluated again
    assert pipeline.evaluate_cached(str(gen_path), None, "data", cfg, torch.device("cuda"), cache)["R1"] == 3
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "ANOTHER")
    assert pipeline.evaluate_cached(str(gen_path), None, "data", cfg, torch.device("cpu"), cache)["R1"] == 4
    threads = torch.get_num_threads()
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads + 1)
    assert pipeline.evaluate_cached(str(gen_path), None, "data", cfg, torch.device("cpu"), cache)["R1"] == 5
    assert calls == ["cpu", "cuda", "cuda", "cpu", "cpu"]
    calls.clear()
    with open(cache, "w") as f:                                       # a damaged cache is a cache: rebuilt, not a crash
        f.write("garbage{")
    assert pipeline.evaluate_cached(str(gen_path), None, "data", cfg, torch.device("cpu"), cache)["R1"] == 1
    assert calls == ["cpu"] and list(json.load(open(cache)).values())[0]["R1"] == 1
    with open(cache, "w") as f:                                       # JSON, but not this cache's: rebuilt too
        f.write("[]")
    assert pipeline.evaluate_cached(str(gen_path), None, "data", cfg, torch.device("cpu"), cache)["R1"] == 2


def test_the_table_names_the_machine_its_numbers_were_computed_on(capsys):
    """Another CPU (instruction set), thread count or GPU rounds otherwise: the same command repeats the README's
    numbers to the last digit only on the same kind of machine, so results.json and the table say which."""
    m = common.machine(torch.device("cpu"))
    assert m["cpu"].endswith(", " + torch.backends.cpu.get_cpu_capability()) and m["gpu"] is None
    names = [ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")] \
        if os.path.isfile("/proc/cpuinfo") else []                   # the model: MKL's kernels depend on it
    assert m["cpu"].startswith(names[0] + ", " if names else "")
    row = {k: {"mean": 1.0, "ci": 0.0} for k in metrics.KEYS}
    result = {"real": row, "base": {**row, "peak_saved_mib": 0.0, "time_s": 1},
              "easytune": {**row, "peak_saved_mib": 1.0, "time_s": 1}, "guidance": 7.5, "machine": m}
    pipeline.print_table(result, easytune.EasyTuneConfig())
    assert (f"(mean ± 95% CI) on {m['cpu']}, {m['threads']} threads, torch {torch.__version__}:"
            in capsys.readouterr().out)


def test_the_pipeline_resumes_every_interrupted_prerequisite(tiny_data, tmp_path, monkeypatch):
    """The one command builds each missing prerequisite with resume on, so a first run stopped in the middle of
    the evaluator, the reward (pretraining or SPL) or the backbone goes on from that build's saved state; each
    build's config names the preset its values come from (it is saved with the checkpoint)."""
    built = {}

    def fake(kind, done=None):
        def build(cfg, *mode):
            built[kind + "".join(mode)] = cfg.resume, cfg.preset
            common.atomic_save({"kind": kind, **({"done": True} if done else {})}, cfg.out)
        return build
    monkeypatch.setattr(pipeline.metrics, "train_evaluator", fake("evaluator"))
    monkeypatch.setattr(pipeline.spl, "train", fake("reward"))
    monkeypatch.setattr(pipeline.models, "train", fake("generator", done=True))
    cfg = easytune.EasyTuneConfig(preset="tiny", runs=str(tmp_path), data=tiny_data)
    pipeline.prerequisites(cfg, torch.device("cpu"))
    assert built == dict.fromkeys(["evaluator", "rewardpretrain", "rewardspl", "generator"], (True, "tiny"))
    built.clear()                                                   # R_phi given: no reward of its own is built
    given = str(tmp_path / "r.pt")
    torch.save({"kind": "reward", "model": {"mean": torch.tensor(data.load_stats(tiny_data)[0])},
                "vocab": data.build_vocab(tiny_data).itos}, given)
    pipeline.prerequisites(dataclasses.replace(cfg, runs=str(tmp_path / "own"), reward_model=given),
                           torch.device("cpu"))
    assert list(built) == ["evaluator", "generator"]


def test_the_pipeline_checks_what_it_can_before_the_first_build(tiny_data, tmp_path, monkeypatch):
    """Minutes of training must not come before an error a second's reading finds: a batch larger than the
    training split (the default preset's SPL pool of 256 on a small folder), an empty split, a given reward of
    another dataset; a stopped build of other settings names the file to remove (no --resume was typed); the
    tiny preset's models live apart from the default's; two folders' reward.pt get two output folders."""
    built = []
    monkeypatch.setattr(pipeline.metrics, "train_evaluator", lambda cfg: built.append("evaluator"))
    cfg = easytune.EasyTuneConfig(runs=str(tmp_path / "runs"), data=tiny_data)
    with pytest.raises(common.InputError, match=r"136 training items, fewer than SPL's batch of 256 \(--preset tiny"):
        pipeline.prerequisites(cfg, torch.device("cpu"))
    d = tmp_path / "d"
    shutil.copytree(tiny_data, d)
    (d / "test.txt").write_text("")
    with pytest.raises(data.DataError, match=r"test\.txt: split is empty"):
        pipeline.prerequisites(dataclasses.replace(cfg, preset="tiny", data=str(d)), torch.device("cpu"))
    other = str(tmp_path / "other.pt")
    torch.save({"kind": "reward", "model": {"mean": torch.tensor(data.load_stats(tiny_data)[0]) + 1},
                "vocab": data.build_vocab(tiny_data).itos}, other)
    with pytest.raises(common.InputError, match=r"other\.pt: trained on another dataset than .*\(its Mean\.npy "
                       r"differs\)$"):                                        # no hint: not a cached artefact
        pipeline.prerequisites(dataclasses.replace(cfg, preset="tiny", reward_model=other), torch.device("cpu"))
    assert built == []                                                          # nothing was trained for these

    def stale(cfg):
        raise common.ResumeMismatch(cfg.out + ".part", "--resume with settings other than the saved run's (x)", "y")
    monkeypatch.setattr(pipeline.metrics, "train_evaluator", stale)
    tiny_run = re.escape(os.path.join(cfg.runs, os.path.basename(tiny_data) + "-tiny"))    # apart from the default's
    with pytest.raises(common.CheckpointError, match=rf"\[evaluator\] {tiny_run}/evaluator\.pt\.part: a stopped build "
                       r"of other settings.*remove .*evaluator\.pt\.part to build afresh"):
        pipeline.prerequisites(dataclasses.replace(cfg, preset="tiny"), torch.device("cpu"))
    run_dir = str(tmp_path / "runs" / "synth")
    a, b = pipeline.reward_name(str(tmp_path / "a" / "reward.pt"), run_dir), \
        pipeline.reward_name(str(tmp_path / "b" / "reward.pt"), run_dir)
    assert pipeline.reward_name(os.path.join(run_dir, "reward_s8.pt"), run_dir) == "reward_s8"   # the README's names
    assert a != b and a.startswith("reward@") and b.startswith("reward@")


def test_a_bad_reward_model_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    """--reward-model is read when the command line is, not after minutes of prerequisites: a missing, corrupt
    or foreign file, an ensemble with an evaluator, and an evaluator scoring noisy motion are refused (exit 2,
    naming the flag and the file) and no run folder is made."""
    paths = {n: str(tmp_path / f"{n}.pt") for n in ("bad", "gen", "ev", "r")}
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    for n, kind in (("gen", "generator"), ("ev", "evaluator"), ("r", "reward")):
        torch.save({"kind": kind}, paths[n])
    runs = str(tmp_path / "runs")
    monkeypatch.setattr(pipeline, "prerequisites", lambda *a: pytest.fail("the prerequisites were started"))
    for spec, why in ((paths["bad"], r"bad\.pt: corrupt or truncated"),
                      (str(tmp_path / "no.pt"), r"no\.pt: checkpoint not found"),
                      (paths["gen"], r"gen\.pt: a 'generator' checkpoint; expected a spl\.py reward"),
                      (f"{paths['r']},{paths['ev']}", "an ensemble takes spl.py rewards only"),
                      (paths["r"] + ",", "an empty name"),
                      (paths["ev"], "an evaluator reads clean motion; add --reward-input x0")):
        monkeypatch.setattr("sys.argv", ["easytune.py", "--backbone", "mld", "--runs", runs, "--reward-model", spec])
        with pytest.raises(SystemExit) as e:
            common.cli(easytune.main)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith("error: --reward-model ") and re.search(why, err), err
    assert not os.path.exists(runs)
    assert easytune.parse(["--reward-model", paths["ev"], "--reward-input", "x0"]).reward_model == paths["ev"]


def test_prerequisites_are_reused_only_for_the_dataset_they_were_trained_on(tiny_data, tmp_path, monkeypatch):
    """runs/<name>/ is named after the data folder, so another folder of the same name (other statistics) must
    not reuse its evaluator, rewards and backbone: refused, naming the way out, before any work."""
    built = []

    def fake(kind):
        def build(cfg, *mode):
            built.append(kind)
            common.atomic_save({"kind": kind, "done": True, "model": {"mean": torch.tensor(data.load_stats(cfg.data)[0])},
                                "vocab": data.build_vocab(cfg.data).itos, "words": metrics.word_vocab(cfg.data)}, cfg.out)
        return build
    monkeypatch.setattr(pipeline.metrics, "train_evaluator", fake("evaluator"))
    monkeypatch.setattr(pipeline.spl, "train", fake("reward"))
    monkeypatch.setattr(pipeline.models, "train", fake("generator"))
    a, b = tmp_path / "a" / "d", tmp_path / "b" / "d"
    shutil.copytree(tiny_data, a)
    shutil.copytree(tiny_data, b)
    np.save(b / "Mean.npy", np.load(b / "Mean.npy") + 0.5)
    cfg = easytune.EasyTuneConfig(preset="tiny", runs=str(tmp_path / "runs"), data=str(a))
    for _ in range(2):
        _, _, report = pipeline.prerequisites(cfg, torch.device("cpu"))
    assert len(built) == 4 and set(report.values()) == {"reused"}                 # built once, then reused
    with pytest.raises(common.InputError, match=r"evaluator\.pt: trained on another dataset than .*b/d .*another --runs"):
        pipeline.prerequisites(dataclasses.replace(cfg, data=str(b)), torch.device("cpu"))
    (tmp_path / "f").write_text("a file")
    with pytest.raises(common.InputError, match=r"--runs .*f: a file, not a folder"):
        pipeline.prerequisites(dataclasses.replace(cfg, runs=str(tmp_path / "f")), torch.device("cpu"))
    c = tmp_path / "c" / "d"                                          # the same statistics, other captions
    shutil.copytree(tiny_data, c)
    with open(c / "texts" / f"{data.read_split(str(c), 'train')[0]}.txt", "a") as f:
        f.write("a zebra walks#a/DET zebra/NOUN walk/VERB#0.0#0.0\n")
    with pytest.raises(common.InputError, match=r"evaluator\.pt: .*c/d \(its captions' vocabulary differs\)"):
        pipeline.prerequisites(dataclasses.replace(cfg, data=str(c)), torch.device("cpu"))
    assert len(built) == 4
    (b / "Mean.npy").unlink()                                   # a bad folder: its own error, no hint, no empty folder
    for runs in (cfg.runs, str(tmp_path / "runs2")):
        with pytest.raises(data.DataError, match="Mean.npy: normalisation statistics not found$"):
            pipeline.prerequisites(dataclasses.replace(cfg, data=str(b), runs=runs), torch.device("cpu"))
    assert not (tmp_path / "runs2").exists()


@pytest.mark.filterwarnings("ignore:R-Precision over")
def test_the_one_command_writes_results_json_in_the_issues_shape(tiny_data, tmp_path, monkeypatch):
    """`python easytune.py` end to end at tiny sizes (the GIFs left to their own test): results.json holds the
    base and easytune rows, each metric as {mean, ci} with the peak memory and time, and the config."""
    monkeypatch.setattr(pipeline, "render", lambda *a: [])
    cfg = easytune.resolve(easytune.EasyTuneConfig(preset="tiny", runs=str(tmp_path), data=tiny_data))
    pipeline.run(cfg)
    with open(tmp_path / (os.path.basename(tiny_data) + "-tiny") / "results.json") as f:
        got = json.load(f)
    for row in ("base", "easytune"):
        assert all(set(got[row][k]) == {"mean", "ci"} for k in ("R1", "R2", "R3", "FID", "MMDist", "Diversity"))
        assert {"peak_saved_mib", "time_s"} <= set(got[row])
    assert got["config"] == dataclasses.asdict(cfg) and got["finetune"]["updates"] > 0 and got["machine"]
