r"""
easytune.py -- EasyTune: step-aware fine-tuning of a motion diffusion model (paper Sec. 4.1,
Eq. 6-9, Algorithm 1, App. A.2, A.5, B.1-B.3), and the command line of the one command that runs the whole
study (its plumbing, prerequisites to results, is pipeline.py).

Differentiable-reward methods (DRaFT, AlignProp, DRTune; baselines.py) back-propagate R_phi(x_0, c)
through the T-step chain: the gradient for step t carries the product of Jacobians of all later steps
(Eq. 5), memory grows with T, and theta moves once per trajectory. EasyTune cuts the chain:

    x_{t-1} = pi_theta(sg(x_t), t, c)                                     (Eq. 7)
    d x_{t-1} / d theta = d pi_theta(sg(x_t), t, c) / d theta             (Eq. 8, Corollary 2)
    loss_t = -R_phi(x_t-dependent input, c), backward, clip, step (lr w_t) (Eq. 6, 9; w_t: App. A.5)

so each trained step is one update with the graph of that step only (O(1) memory, T updates per
trajectory, no vanishing product). The reward at a step is Eq. 12:
    "x0"    R_phi(decode(x0_hat), 0, c), the one-step prediction (ODE samplers; the released code's)
    "noisy" R_phi(decode(x_{t-1}), t-1, c), the noise-aware reward (SDE and ODE; the default here,
            chosen on val for both backbones: see the README)

Algorithm 1 has two variants: step optimisation updates theta in place after every trained step
(later steps of the same trajectory already see the new theta); chain optimisation samples the
whole trajectory with theta, applies each step's gradient to a copy theta', and sets theta <- theta'
at the end of the trajectory.

Notation (code -> paper): model.denoise_step -> pi_theta, x_t.detach() -> sg(x_t), x0_hat -> \hat{x}_0,
reward -> R_phi, w -> w_t (App. A.5), theta_prime -> theta', kl_weight -> the KL term of Eq. S1.

NOTE (deviations): the paper trains all 50 steps (Table S1) and the released code the last 10
(`--train-steps last:10` reproduces it); the released code scores x0_hat with the reward's timestep
dropped, as the "x0" mode does here. Selection and early stopping use the val split and only the
reward (mean val reward, with a reward-embedding FID as a guard); the evaluator never selects.
MLD's default adds the KL term of Eq. S1 (weight 100) at the paper's lr 1e-5; MDM's is lr 1e-6 for
30 trajectories without it (both chosen on held-out data, never test; see BACKBONE_DEFAULTS). The reward is
Eq. 11's similarity, as in the paper; a contrastive form is an option (see RewardFn). `--reward-model`
swaps R_phi for another spl.py reward (e.g. the one before SPL), for the mean of several
(comma-separated; spl.RewardEnsemble, not in the paper; README, "A reward ensemble") or, as a diagnostic,
the second evaluator (never the test one; README, "A second evaluator as the reward"). App. A.5's step weight
w_t scales step t's learning rate, not its loss: clipping at 1.0 (most steps' gradients are larger)
and AdamW's normalisation would undo a weight on the loss (see easytune_trajectory).

Run:  python easytune.py --backbone mld            # everything, from a fresh clone, on a CPU
      python easytune.py --backbone mdm
      python easytune.py --backbone mld --preset tiny   # a smoke test, about a minute
      python easytune.py --backbone mld --resume        # continue a stopped run from its last.pt
      python easytune.py --backbone mld --reward-model runs/synth/reward_pretrained.pt   # EasyTune without SPL
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

import common
import data
import metrics
import models
import spl


@dataclass
class EasyTuneConfig:
    backbone: str = "mld"
    preset: str = "default"          # tiny (smoke test) | default (the CPU study)
    runs: str = "runs"               # everything is cached under runs/<dataset>/
    data: str = ""                   # a HumanML3D-format folder; empty: the embedded benchmark
    method: str = "step"             # step | chain (Algorithm 1)
    reward_input: str = "noisy"      # noisy | x0 (Eq. 12); for MLD, val preferred noisy (top-1 +12.3% vs +7.2%, lr 3e-6)
    reward_form: str = "similarity"  # similarity: Eq. 11 | contrastive: log p(c | x) among training captions
    reward_model: str = ""           # empty: runs/<dataset>/reward.pt (SPL, built if missing); or (none built)
                                     # another spl.py reward; or several, comma-separated: their mean
                                     # (spl.RewardEnsemble); or, as a diagnostic, a second metrics.py evaluator
                                     # (never the test one)
    train_steps: str = "all"         # all | last:K | first:K | random:K (drawn once per trajectory)
    weighting: str = "uniform"       # uniform | increasing | decreasing (App. A.5)
    guidance: float = -1.0           # CFG scale kept during fine-tuning; < 0: the backbone's (7.5 / 2.5)
    kl_weight: float = 0.0           # Eq. S1 against the frozen pre-trained model (off in the paper's main tables);
                                     # MLD's default is 100 (BACKBONE_DEFAULTS)
    lora_rank: int = 0               # 0: full fine-tuning of the denoiser
    lr: float = 1e-5                 # the paper's; MDM's default is 1e-6 (BACKBONE_DEFAULTS)
    clip: float = 1.0
    batch_size: int = 32             # NOTE (deviation): Table S1's is 256; 32 keeps a trajectory near 10 s on 2 cores
    trajectories: int = 15           # budget: sampled trajectories (each gives up to T updates); ~10 s each on 2 cores
    sample_steps: int = 50           # T
    val_every: int = 5               # trajectories between val checks (and checkpoints)
    patience: int = 3                # val checks without improvement before stopping early
    replications: int = 3            # test replications (the paper: 20)
    seed: int = 0
    device: str = "auto"
    resume: bool = False


PRESETS = {"tiny": {"trajectories": 4, "val_every": 2, "batch_size": 8, "sample_steps": 10, "replications": 2,
                    "lr": 1e-4},
           "default": {}}
# Per-backbone defaults, chosen on held-out data with a second evaluator (never the test one). MDM (README,
# "EasyTune on MDM"): at 3e-6 its val reward peaked after 5 trajectories and fell; 1e-6 for 30 rose to the
# end (val R-P top-1 +21% vs +14% at seed 0; seed 2 agrees, seed 1 prefers 3e-6, the intervals overlapping).
# MLD (README, "The KL term"): without the KL term 1e-5 drifts (the
# reward-FID rose 0.064 -> 0.120 in 5 trajectories), so lr 3e-6 was its default until 400 fresh held-out
# source motions preferred KL 100 at lr 1e-5 on every column (top-1 +6.3% vs +3.7%, FID 0.31 vs 0.40).
BACKBONE_DEFAULTS = {"mld": {"kl_weight": 100.0}, "mdm": {"lr": 1e-6, "trajectories": 30}}


# -----------------------------------------------------------------------------
# One step of Algorithm 1: the loss of pi_theta(sg(x_t), t, c) under the step-aware reward.


def to_reward_space(feats, gen, reward):
    """Generator-normalised features -> the reward's normalisation (both read the same 263 dims)."""
    return reward.normalise(feats * gen.std + gen.mean)


class RewardFn:
    """R_phi as the fine-tuners call it: (normalised generator features, lengths, captions, alpha_bar) -> (B,).
    form "similarity" (the default) is Eq. 11, tau cos(E_M(x, t), E_T(c)). form "contrastive" is
    log p(c | x) among c and 512 training captions (spl.Reward.log_prob), which saturates once the
    motion is retrieved by its caption. Chosen on val with a second evaluator (metrics.py's
    architecture, seed 4321; never the test evaluator; commands in the README), 15 trajectories at
    lr 3e-6 on x0_hat: R-P top-1 0.571 (base) -> 0.613 (similarity) / 0.590 (contrastive), FID 0.82 -> 0.59 / 0.78.
    A diagnostic, not the paper's reward: `reward` may be a metrics.Evaluator (the second one; never the
    test one, see load_reward_model), scored as minus its T2M distance ||E_M(x) - E_T(c)||, the
    per-item MM-Dist. It reads clean motion only (alpha_bar is refused)."""

    def __init__(self, reward, gen, root, form="similarity"):
        if form not in ("contrastive", "similarity"):
            raise common.InputError(f"--reward-form {form!r}: contrastive or similarity")
        self.reward, self.gen, self.form = reward, gen, form
        self.is_evaluator = isinstance(reward, metrics.Evaluator)
        if self.is_evaluator:
            if form != "similarity":
                raise common.InputError("--reward-form contrastive needs a spl.py reward, not an evaluator")
            self.tokens = caption_tokens(root)                             # the evaluator reads words + POS
        if form != "similarity" and isinstance(reward, spl.RewardEnsemble):
            raise common.InputError("--reward-form contrastive needs one spl.py reward, not an ensemble")
        self.bank = reward.caption_bank(root) if form == "contrastive" else None   # 512 training captions

    def __call__(self, feats, lengths, captions, alpha_bar=None):
        mask = (feats != 0).any(-1, keepdim=True)
        if self.is_evaluator:
            if alpha_bar is not None:
                raise common.InputError("an evaluator as the reward reads clean motion: use --reward-input x0")
            text = self.reward.embed_text([self.tokens[c] for c in captions])
            return -(self.embed(feats, lengths, mask) - text).norm(dim=-1)               # (B,)
        x = to_reward_space(feats, self.gen, self.reward) * mask
        if self.form == "similarity":
            return self.reward(x, lengths, captions, alpha_bar)
        return self.reward.log_prob(x, lengths, captions, self.bank, alpha_bar)

    def embed(self, feats, lengths, mask):
        """Clean motion embeddings E_M(x) of generator-normalised features (B, T, D), mask (B, T, 1)."""
        if self.is_evaluator:
            return self.reward.embed_motion((feats * self.gen.std + self.gen.mean) * mask, lengths)
        return self.reward.motion_embed(to_reward_space(feats, self.gen, self.reward) * mask, lengths)


def caption_tokens(root: str) -> dict:
    """caption -> its 'word/POS' tokens, over the train and val splits (what an evaluator reads; the
    caption files only, as metrics.word_vocab reads them)."""
    return {c: tok for split in ("train", "val") for name in data.read_split(root, split)
            for c, tok, _, _ in data.load_captions(root, name)}


def step_reward(gen, reward_fn, x_prev, x0_hat, t_prev, cond, captions, mode):
    """Eq. 12: R_phi(decode(x0_hat), 0, c) or R_phi(decode(x_{t-1}), t-1, c); (B,)."""
    x, ab = (x0_hat, None) if mode == "x0" else (x_prev, gen.scheduler._ab(t_prev, cond.lengths).reshape(-1))
    return reward_fn(gen.decode(x, cond.mask), cond.lengths, captions, ab)


def step_loss(gen, reward_fn, x_t, t, cond, captions, cfg, ref=None, noise=None):
    """Eq. 7 and 9 for one step: -> (loss, x_{t-1} detached, mean reward). The input is sg(x_t), so
    the graph holds this step only (Corollary 2)."""
    guidance = gen.cfg.guidance if cfg.guidance < 0 else cfg.guidance
    x_prev, x0_hat = gen.denoise_step(x_t.detach(), t, cond, guidance, noise=noise)        # Eq. 7
    r = step_reward(gen, reward_fn, x_prev, x0_hat, int(t) - gen.scheduler.step_ratio, cond, captions,
                    cfg.reward_input)
    loss = -r.mean()               # NOTE (deviation): Table S1's reward weight is 0.1; the released code's is 1 (so
    #                                here): under AdamW the scale matters only through the clip and the KL term's balance
    if cfg.kl_weight > 0:                                                                    # Eq. S1
        with torch.no_grad():
            x_ref, _ = ref.denoise_step(x_t.detach(), t, cond, guidance, noise=noise)
        # NOTE (deviation): Eq. S1 as printed, -E[R + D_KL], would maximise the KL; the term is added to the
        # loss here (minimised), which regularises, as the text around it intends. theta' in S1 is undefined
        # there; we read it as the frozen pre-trained model.
        # The KL between the two steps' Gaussians is ||mu - mu_ref||^2 / (2 sigma_t^2)
        # (both steps take the same noise, so x_prev - x_ref = mu - mu_ref). MLD's DDIM (eta = 0) has
        # sigma_t = 0, so both backbones use the mean squared distance, weighted by kl_weight.
        loss = loss + cfg.kl_weight * ((x_prev - x_ref) ** 2).mean()
    return loss, x_prev.detach(), r.mean().item()


def trained_steps(spec: str, T: int, rng) -> list:
    """Which loop indices i (0 = pure noise, T-1 = last step) carry an update in this trajectory."""
    if spec == "all":
        return list(range(T))
    kind, _, k = spec.partition(":")
    if kind not in ("last", "first", "random") or not k.isdigit() or not 1 <= int(k) <= T:
        raise common.InputError(f"--train-steps {spec!r}: all, last:K, first:K or random:K with 1 <= K <= {T}")
    k = int(k)
    return {"last": list(range(T - k, T)), "first": list(range(k)),
            "random": sorted(rng.choice(T, k, replace=False).tolist())}[kind]


def step_weight(kind: str, i: int, T: int) -> float:
    """App. A.5, with the paper's t = T - i: increasing w_t = (T - t)/T + 0.5 (late steps weigh more),
    decreasing w_t = -(T - t)/T + 1.5 (early steps weigh more)."""
    t = T - i
    return {"uniform": 1.0, "increasing": (T - t) / T + 0.5, "decreasing": -(T - t) / T + 1.5}[kind]


def easytune_trajectory(gen, reward_fn, captions, lengths, cfg, opt, params, rng, g, theta_prime=None, ref=None,
                        meter=None, log=None):
    """Algorithm 1, one trajectory. Step optimisation: opt steps params (theta) in place after each
    trained step. Chain optimisation: gradients are taken at theta and applied to theta_prime by opt,
    and theta <- theta' once the trajectory is sampled. -> list of per-update records."""
    with torch.no_grad():
        cond = gen.condition(captions, lengths)
    gen.scheduler.set_timesteps(cfg.sample_steps)
    if ref is not None:                                   # the KL reference steps t -> t-1 on the same grid
        ref.scheduler = gen.scheduler
    x = gen.init_noise(cond, g)                                                          # x_T ~ N(0, I)
    train_at = set(trained_steps(cfg.train_steps, cfg.sample_steps, rng))
    eta = gen.cfg.eta
    records = []
    for i, t in enumerate(gen.scheduler.timesteps):                                     # t = T .. 1
        noise = torch.randn(x.shape, generator=g, device=gen.device) if eta > 0 else None
        if i not in train_at:
            with torch.no_grad():
                x, _ = gen.denoise_step(x, t, cond, None if cfg.guidance < 0 else cfg.guidance, noise=noise)
            continue
        with meter if meter is not None else contextlib.nullcontext():
            loss, x, r = step_loss(gen, reward_fn, x, t, cond, captions, cfg, ref, noise)
            for p in params:
                p.grad = None
            loss.backward()                                                              # graph of step t only
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.clip).item()
        if theta_prime is not None:                                                      # chain: update theta'
            for p, q in zip(params, theta_prime):                                        # (already clipped)
                q.grad = None if p.grad is None else p.grad.clone()
        # NOTE (deviation): App. A.5 weights step t's reward by w_t. A weight on the loss does not survive
        # clipping (78% of MLD's updates have a gradient norm above 1.0, the early steps all of them) nor
        # AdamW, which divides by the gradient's running scale; here w_t scales the step's lr, so step t
        # moves theta w_t times as far as a uniform step would (its KL term too).
        lr = cfg.lr * step_weight(cfg.weighting, i, cfg.sample_steps)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()                                                                       # x = sg(x_{t-1}) above
        records.append({"i": i, "t": int(t), "reward": r, "loss": loss.item(), "grad_norm": grad_norm, "lr": lr,
                        "peak_saved_mib": meter.peak_mib if meter is not None else None})
    if theta_prime is not None:                                       # Algorithm 1, lines 15-17: theta <- theta'
        with torch.no_grad():
            for p, q in zip(params, theta_prime):
                p.copy_(q)
    return records


# -----------------------------------------------------------------------------
# Selection on the val split: the reward only.


@torch.no_grad()
def val_score(gen, reward_fn, root, steps=50, seed=0, max_items=128):
    """Mean reward of motions generated for val captions (fixed noise), and a reward-embedding FID
    between them and the real val motions (a realism guard that does not use the evaluator)."""
    ds = data.MotionTextDataset(root, "val", seed=seed, deterministic=True)
    b = data.collate([ds[i] for i in range(min(len(ds), max_items))])
    lengths, mask = b["lengths"].to(gen.device), b["mask"].to(gen.device)
    g = torch.Generator(device=gen.device).manual_seed(seed)
    x = gen.sample(b["captions"], lengths, steps=steps, generator=g)
    r = reward_fn(x, lengths, b["captions"]).mean().item()
    e_fake, e_real = (reward_fn.embed(v, lengths, mask[..., None]).cpu().double().numpy()
                      for v in (x, b["motion"].to(gen.device)))
    return {"val_reward": r, "val_reward_fid": metrics.fid(e_fake, e_real), "touched": sorted(set(b["names"]))}


def better(score, best, base, slack=0.25):
    """The selection rule: a higher val reward than the pre-trained model and every earlier check,
    provided the reward-embedding FID stays within 25% (relative) + 0.05 (absolute, its sampling
    noise on 128 val items) of the pre-trained model's."""
    ok = score["val_reward_fid"] <= (1 + slack) * base["val_reward_fid"] + 0.05
    return ok and score["val_reward"] > (best or base)["val_reward"]


# -----------------------------------------------------------------------------
# Fine-tuning: the flat loop.


def finetune(gen, reward, cfg, root, out_dir, log_path):
    """Run EasyTune for cfg.trajectories trajectories with val checks; best.pt and last.pt go to out_dir,
    one JSON line per update to log_path. -> the run's summary (updates, time, val history, best)."""
    device = gen.device
    rng = np.random.default_rng(cfg.seed)
    g = torch.Generator(device=device).manual_seed(cfg.seed)
    train_set = data.MotionTextDataset(root, "train", seed=cfg.seed)
    if cfg.batch_size > len(train_set):
        raise common.InputError(f"--batch-size {cfg.batch_size}: more than the {len(train_set)} training items of {root}")
    reward.requires_grad_(False)
    gen.requires_grad_(False)
    set_guidance(gen, cfg.guidance)            # val checks, and the checkpoints' sampler, use the tuned scale
    reward_fn = RewardFn(reward, gen, root, cfg.reward_form)
    params, theta_prime, opt = trainable(gen, cfg)
    ref = copy.deepcopy(gen).requires_grad_(False) if cfg.kl_weight > 0 else None
    meter = metrics.SavedTensorMeter(gen, reward)
    ckpt_path, best_path = os.path.join(out_dir, "last.pt"), os.path.join(out_dir, "best.pt")
    start, end, updates, elapsed, history, best, bad_checks = 0, cfg.trajectories, 0, 0.0, [], None, 0
    ck = common.load_checkpoint(ckpt_path, "easytune") if common.to_resume(ckpt_path, cfg.resume) else None
    if ck is not None:
        check_resumable(ck, cfg, ckpt_path, device)                                      # before any work
    base = val_score(gen, reward_fn, root, cfg.sample_steps)
    history.append({"trajectory": 0, **{k: v for k, v in base.items() if k != "touched"}})
    if ck is not None:
        with common.entries(ckpt_path):
            common.load_state(gen, ck["model"], ckpt_path)
            opt.load_state_dict(ck["optimizer"])
            if theta_prime is not None:
                for q, v in zip(theta_prime, ck["theta_prime"], strict=True):
                    q.data.copy_(v)
            start, updates, elapsed, history, best, bad_checks = (ck[k] for k in ("trajectory", "updates", "elapsed",
                                                                                   "history", "best", "bad_checks"))
            rng.bit_generator.state, train_set.rng.bit_generator.state = ck["rng"], ck["data_rng"]  # batches, crops
            g.set_state(ck["torch_rng"])
            meter.peak = ck["peak_saved_bytes"]                        # the run's peak so far, not this call's
        common.keep_lines(log_path, lambda r: r["trajectory"] <= start)      # the updates after it run again
        print(f"resumed {ckpt_path} at trajectory {start}")
        if bad_checks >= cfg.patience:                                 # it had stopped early: it stays stopped
            print(f"the saved run stopped early (no val improvement in {bad_checks} checks); raise --patience to go on")
            end = start
    else:
        if os.path.isfile(ckpt_path):                                  # a previous run's: never resumed into this one
            os.remove(ckpt_path)
        open(log_path, "w").close()
        common.atomic_save(models.generator_checkpoint(merged(gen), selected=None), best_path)  # until val improves
    gen.eval()
    touched = set(base["touched"])
    bar = tqdm(range(start, end), desc=f"easytune {cfg.method}", initial=start, total=cfg.trajectories,
               mininterval=2)
    t0, traj = time.time() - elapsed, start - 1
    for traj in bar:
        idx = rng.choice(len(train_set), cfg.batch_size, replace=False)
        batch = data.collate([train_set[int(i)] for i in idx])
        recs = easytune_trajectory(gen, reward_fn, batch["captions"], batch["lengths"].to(device), cfg, opt, params,
                                   rng, g, theta_prime, ref, meter)
        with open(log_path, "a") as f:
            for r in recs:
                updates += 1
                f.write(json.dumps({"update": updates, "trajectory": traj + 1, **r}) + "\n")
        bar.set_postfix(reward=f"{np.mean([r['reward'] for r in recs]):.3f}", refresh=False)
        if (traj + 1) % cfg.val_every == 0 or traj + 1 == cfg.trajectories:
            score = val_score(gen, reward_fn, root, cfg.sample_steps)
            touched |= set(score.pop("touched"))
            improved = better(score, best, base)
            history.append({"trajectory": traj + 1, **score, "improved": improved})
            tqdm.write(f"trajectory {traj + 1}: val reward {score['val_reward']:.3f} (base {base['val_reward']:.3f}),"
                       f" reward-FID {score['val_reward_fid']:.3f} (base {base['val_reward_fid']:.3f})"
                       f"{'  * best' if improved else ''}")
            if improved:
                best = {**score, "trajectory": traj + 1}
                common.atomic_save(models.generator_checkpoint(merged(gen), selected=best), best_path)
            bad_checks = 0 if improved else bad_checks + 1
            common.atomic_save({"kind": "easytune", "model": gen.state_dict(), "optimizer": opt.state_dict(),
                              "theta_prime": [q.detach() for q in theta_prime] if theta_prime else None,
                              "trajectory": traj + 1, "updates": updates, "elapsed": time.time() - t0,
                              "peak_saved_bytes": meter.peak,
                              "history": history, "best": best, "bad_checks": bad_checks, "rng": rng.bit_generator.state,
                              "data_rng": train_set.rng.bit_generator.state, "torch_rng": g.get_state(),
                              "device_type": device.type, "config": dataclasses.asdict(cfg)}, ckpt_path)
            if bad_checks >= cfg.patience:
                tqdm.write(f"early stop: no val improvement in {cfg.patience} checks")
                break
    summary = {"updates": updates, "trajectories": traj + 1, "time_s": time.time() - t0, "peak_saved_mib": meter.peak_mib,
               "history": history, "best": best, "val_items_touched": len(touched)}
    return summary


RESUMABLE = ("resume", "trajectories", "patience", "replications", "device", "runs")   # may change on --resume


def check_resumable(ck: dict, cfg: EasyTuneConfig, path, device):
    """--resume continues the saved run only with its settings (the budget, patience, device may change,
    within the device's kind)."""
    if "data_rng" not in ck or "device_type" not in ck:
        raise common.CheckpointError(f"{path}: written by an older easytune.py (no data order or device saved); drop --resume")
    needed = ["model", "optimizer", "trajectory", "updates", "elapsed", "history", "best", "bad_checks", "rng",
              "torch_rng", "peak_saved_bytes"] + (["theta_prime"] if cfg.method == "chain" else [])
    missing = [k for k in needed if k not in ck]
    if missing:                                                    # said now, not after the base's val pass
        raise common.CheckpointError(f"{path}: incomplete, no {', '.join(missing)}; drop --resume to start over")
    with common.entries(path):
        common.check_resumable(ck["config"], ck["device_type"], cfg, path, device, may_change=RESUMABLE)


def trainable(gen, cfg):
    """theta (the denoiser, or its LoRA adapters), theta' for chain optimisation, and AdamW over
    what is stepped (theta', or theta in place). Everything else (VAE, text encoder) is frozen."""
    gen.requires_grad_(False)
    if cfg.lora_rank > 0:
        models.inject_lora(gen.denoiser, r=cfg.lora_rank, alpha=2 * cfg.lora_rank)
        params = [p for n, p in gen.named_parameters() if "lora_" in n]
    else:
        params = gen.denoiser_parameters()
    for p in params:
        p.requires_grad_(True)
    theta_prime = [p.detach().clone().requires_grad_(True) for p in params] if cfg.method == "chain" else None
    return params, theta_prime, torch.optim.AdamW(theta_prime or params, lr=cfg.lr, weight_decay=0.0)


def merged(gen):
    """A copy of the generator with any LoRA folded into plain weights (what is saved and evaluated)."""
    out = copy.deepcopy(gen)
    models.merge_lora(out)
    return out


def set_guidance(gen, guidance):
    """--guidance >= 0 replaces the backbone's CFG scale for everything sampled in this run."""
    if guidance >= 0:
        gen.cfg = dataclasses.replace(gen.cfg, guidance=guidance)
    return gen


# -----------------------------------------------------------------------------
# The command line: the config resolved and checked before any work. The one command's plumbing (prerequisites,
# evaluation, GIFs) is pipeline.py.


def reward_kind(spec):
    """'reward' or 'evaluator': what --reward-model names, read from the files (each must be a checkpoint of this
    project; several, comma-separated, must all be spl.py rewards); resolve() asks before minutes of work."""
    kinds = []
    for path in spec.split(","):
        if not path:
            raise common.InputError(f"--reward-model {spec}: an empty name")
        try:
            kinds.append(common.load_checkpoint(path)["kind"])
        except common.CheckpointError as e:
            raise common.InputError(f"--reward-model {spec}: {e}") from None
        if kinds[-1] not in ("reward", "evaluator"):
            raise common.InputError(f"--reward-model {path}: a '{kinds[-1]}' checkpoint; expected a spl.py reward "
                                  "or a metrics.py evaluator")
    if len(kinds) > 1 and set(kinds) != {"reward"}:
        raise common.InputError(f"--reward-model {spec}: an ensemble takes spl.py rewards only")
    return kinds[0]


def resolve(cfg: EasyTuneConfig, given=None) -> EasyTuneConfig:
    """Fill the backbone-dependent defaults and the preset where a field was not given; check the choices.
    `given`: the fields set explicitly (the command line's flags); None: those that differ from the dataclass
    default, which is all a caller that builds the config in code can say."""
    if cfg.backbone not in ("mld", "mdm"):
        raise common.InputError(f"--backbone {cfg.backbone!r}: mld or mdm")
    if cfg.preset not in PRESETS:
        raise common.InputError(f"--preset {cfg.preset!r}: tiny or default")
    if cfg.method not in ("step", "chain"):
        raise common.InputError(f"--method {cfg.method!r}: step or chain")
    if cfg.weighting not in ("uniform", "increasing", "decreasing"):
        raise common.InputError(f"--weighting {cfg.weighting!r}: uniform, increasing or decreasing")
    if cfg.reward_input not in ("x0", "noisy"):
        raise common.InputError(f"--reward-input {cfg.reward_input!r}: x0 or noisy")
    if cfg.reward_form not in ("similarity", "contrastive"):
        raise common.InputError(f"--reward-form {cfg.reward_form!r}: similarity or contrastive")
    if cfg.reward_model and reward_kind(cfg.reward_model) == "evaluator" and cfg.reward_input != "x0":
        raise common.InputError(f"--reward-model {cfg.reward_model}: an evaluator reads clean motion; "
                                "add --reward-input x0")
    if not math.isfinite(cfg.guidance):
        raise common.InputError(f"--guidance {cfg.guidance}: must be finite (< 0: the backbone's own scale)")
    if given is None:
        default = EasyTuneConfig()
        given = {f.name for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != getattr(default, f.name)}
    fill = {**BACKBONE_DEFAULTS[cfg.backbone], **PRESETS[cfg.preset]}
    cfg = common.fill(cfg, fill, given)
    common.check_ranges(cfg, trajectories=">= 1", val_every=">= 1", patience=">= 1", replications=">= 1",
                      batch_size=">= 1", lr="> 0", clip="> 0", kl_weight=">= 0", lora_rank=">= 0",
                      sample_steps=(1, 999), seed=common.SEED)
    trained_steps(cfg.train_steps, cfg.sample_steps, np.random.default_rng(0))          # validates the spec
    return cfg


def parse(argv=None) -> EasyTuneConfig:
    """The command line -> the resolved config; a flag given wins even where it repeats the dataclass default."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    common.add_config_args(p, EasyTuneConfig)
    return resolve(common.config_from_args(EasyTuneConfig, p.parse_args(argv)), given=common.given_flags(p, argv))


def main():
    import pipeline                                        # the one command's plumbing (it imports this module)
    pipeline.run(parse())


if __name__ == "__main__":
    common.cli(main)
