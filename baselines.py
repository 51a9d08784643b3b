r"""
baselines.py -- the differentiable-reward baselines of the paper's Table 1 / Table S1 (DRaFT-K, ReFL-M,
AlignProp, DRTune) under one shared sampler, and the paper's comparisons: Table 1 at an equal
wall-clock budget, memory against T (Figure 6), time to reward (Table S9, Figure S1) and gradient
vanishing (Figure 3).

All methods share models.py's sampler (DDIM, CFG kept, the backbone's eta), spl.py's reward in the
form easytune.py uses, AdamW with easytune.py's clip and its lr without the KL term (MLD 3e-6, MDM
1e-6), and the denoiser as theta. They differ only in where gradient flows
(../shared/reference/baselines.md, sections 0-7):

    method      steps with grad (i = 0 is pure noise)    denoiser input   reward on             updates
    DRaFT-K     the last K: [T-K, T)                      x_t              decode(x_0)           1 / trajectory
    ReFL-M      one step s ~ U{T-M .. T-1}                x_t (no graph)   decode(x0_hat at s)   1
    AlignProp   the last K, K ~ U{1 .. T}                 x_t, ckpt        decode(x_0)           1
    DRTune      K=5 evenly spaced, random phase           sg(x_t)          decode(x0_hat at s)   1
                (whole chain), stop s ~ U{T-10 .. T-1}    (update keeps x_t)
    EasyTune    every step (easytune.py)                  sg(x_t)          step-aware (Eq. 12)   T

The random choices (K, s, the phase) are drawn once per trajectory and shared by the batch.
Eq. 5 is the gradient DRaFT-K takes through its window; DRTune's detached input turns it into a
weighted sum of per-step terms (baselines.md, the identity of section 0); ReFL keeps one term.

NOTE (choices and deviations):
  - AlignProp follows the paper's intent (a contiguous final block of K steps, K drawn once per
    trajectory, each grad-carrying denoiser call under a non-reentrant checkpoint) -- not the per-step
    redraw of the 2023 code (a bug its author acknowledged) nor EasyTune's 25% Bernoulli mask.
    (Table S1's "P = 25, length of truncated backpropagation" is that mask in the released code; here
    K ~ U{1..50} has mean 25.5.)
  - DRTune follows DRTune's paper: K steps spread over the whole chain (its point: early steps get
    credit), the stop in the last M. Table S1's K row, as printed, can be read as DRTune's range being
    [40,50] (the last 10 steps) like DRaFT-10's; baselines.md section 6 argues for [0,50] with M in
    [40,50], the reading taken here.
  - DRTune draws a genuine random phase over one stride (the printed offset formula is degenerate
    when K divides T); trained steps after the stop step are not executed, so some trajectories have
    fewer than K. On a chain no longer than M (T <= M, e.g. --preset tiny's 10 steps) the stop can come
    before the phase, leaving no trained step and no gradient; the stop step is then trained (never at
    the defaults, T = 50 and M = 10, where a trained step always precedes the stop).
  - ReFL draws its stop step from M values (THUDM's code), not EasyTune's M - 1.
  - draft-50 means the last min(50, T) steps: full back-propagation up to T = 50 (DRaFT-full).
  - DRTune's credit to early steps travels through the sampler's x_t term, which exists for an
    eps-predicting model (MLD); an x0-predicting model (MDM) has x0_hat = x0_theta(sg(x_t)), so under
    DRTune only the stop step itself can receive gradient, and for MDM the stop step is therefore
    the one trained step (otherwise ~90% of trajectories would have no gradient at all, and the K
    spread steps would build graphs that no gradient reaches). tests/test_baselines.py shows both.
  - Every baseline keeps CFG with gradient through both branches; no LoRA (full denoiser) by default.

Run:  python baselines.py compare --backbone mld [--budget-min 2]       # Table 1 at equal wall clock [--resume]
      python baselines.py compare --backbone mld --trajectories 20       # ... at equal trajectories
      python baselines.py memory --steps 10,20,50,100 [--preset tiny] --json runs/memory.json
      python baselines.py vanish --backbone mld [--generator CKPT]       # Figure 3 (the base model's chain)
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.checkpoint import checkpoint
from tqdm import tqdm

import common
import data
import easytune
import metrics
import models
import pipeline
import spl

METHODS = ["easytune-step", "easytune-chain", "draft-10", "draft-50", "refl-10", "refl-20", "alignprop", "drtune"]


@dataclass
class CompareConfig:
    backbone: str = "mld"
    preset: str = "default"
    runs: str = "runs"
    data: str = ""
    methods: str = ",".join(METHODS)
    budget_min: float = 1.5          # wall clock of fine-tuning per method (val checks excluded)
    trajectories: int = 0            # > 0: an equal number of trajectories instead of equal time
    val_checks: int = 8              # val reward checks per method (the curves and the selection)
    val_items: int = 64
    drtune_k: int = 5                # DRTune: trained steps spread over the chain
    drtune_m: int = 10               # DRTune: early-stop window at the end
    replications: int = 2            # test replications per method (nine models to sample on a CPU)
    seed: int = 0
    device: str = "auto"
    resume: bool = False             # keep the base and the methods an interrupted comparison finished


@dataclass
class Plan:
    """Where gradient flows in one trajectory (baselines.md section 7)."""
    grad_steps: set                  # loop indices whose denoiser call builds a graph
    sg_input: bool = False           # DRTune: the denoiser reads sg(x_t), the update keeps x_t
    stop: int | None = None          # return decode(x0_hat) at this index (ReFL, DRTune)
    ckpt: bool = False               # AlignProp: recompute each denoiser call in backward


def plan(method: str, T: int, rng, drtune_k=5, drtune_m=10, x0_model=False) -> Plan:
    """Draw one trajectory's plan (once per trajectory, shared by the batch); x0_model: the denoiser
    predicts x_0 (MDM), which changes where DRTune's gradient can flow (see the NOTE above)."""
    kind, _, k = method.partition("-")
    if kind == "draft":                                              # DRaFT-K: the last K steps
        return Plan(set(range(T - min(int(k), T), T)))
    if kind == "refl":                                               # ReFL-M: one step in the last M
        s = T - 1 - int(rng.integers(min(int(k), T)))
        return Plan({s}, stop=s)
    if kind == "alignprop":                                          # randomised truncated BPTT
        K = int(rng.integers(1, T + 1))
        return Plan(set(range(T - K, T)), ckpt=True)
    if kind == "drtune":                                             # evenly spaced, random phase
        stride = max(T // drtune_k, 1)
        phase = int(rng.integers(stride))
        stop = T - 1 - int(rng.integers(min(drtune_m, T)))
        steps = {phase + j * stride for j in range(drtune_k) if phase + j * stride <= stop}
        if x0_model or not steps:                                    # see the NOTE: only the stop step can learn
            steps = {stop}
        return Plan(steps, sg_input=True, stop=stop)
    raise common.InputError(f"unknown method {method!r}: one of {', '.join(METHODS)}")


def rollout(gen, cond, T, p: Plan, guidance, g):
    """The shared sampler with the plan's gradient flow -> the features the reward reads (B, F, D)."""
    gen.scheduler.set_timesteps(T)
    x = gen.init_noise(cond, g)                                      # x_T
    eta = gen.cfg.eta
    for i, t in enumerate(gen.scheduler.timesteps):
        noise = torch.randn(x.shape, generator=g, device=x.device) if eta > 0 else None
        if i in p.grad_steps:
            inp = x.detach() if p.sg_input else x
            out = (checkpoint(gen.guided_output, inp, t, cond, guidance, use_reentrant=False) if p.ckpt
                   else gen.guided_output(inp, t, cond, guidance))
        else:
            with torch.no_grad():                                    # truncated: no graph for this call
                out = gen.guided_output(x, t, cond, guidance)
        x_prev, x0_hat = gen.scheduler.step(out, t, x, eta, noise=noise)    # the update keeps x_t (DRTune)
        if i == p.stop:
            return gen.decode(gen.mask_latent(x0_hat, cond), cond.mask)
        x = gen.mask_latent(x_prev, cond)
    return gen.decode(x, cond.mask)                                  # decode(x_0)


def baseline_update(method, gen, reward_fn, captions, lengths, cfg, opt, params, rng, g, meter=None, ccfg=None):
    """One trajectory of a baseline: rollout, -R on what it reads, backward, clip, one step."""
    ccfg = ccfg or CompareConfig()
    p = plan(method, cfg.sample_steps, rng, ccfg.drtune_k, ccfg.drtune_m,
             x0_model=gen.scheduler.prediction_type == "sample")
    guidance = gen.cfg.guidance if cfg.guidance < 0 else cfg.guidance
    with torch.no_grad():
        cond = gen.condition(captions, lengths)
    with meter if meter is not None else contextlib.nullcontext():
        r = reward_fn(rollout(gen, cond, cfg.sample_steps, p, guidance, g), cond.lengths, captions).mean()
        for q in params:
            q.grad = None
        (-r).backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.clip).item()
    opt.step()
    return [{"i": sorted(p.grad_steps), "reward": r.item(), "loss": -r.item(), "grad_norm": grad_norm}]


def trajectory(method, gen, reward_fn, captions, lengths, cfg, opt, params, rng, g, theta_prime=None, meter=None,
               ccfg=None):
    """One trajectory of any method -> its update records."""
    if method.startswith("easytune"):
        return easytune.easytune_trajectory(gen, reward_fn, captions, lengths, cfg, opt, params, rng, g,
                                            theta_prime, meter=meter)
    return baseline_update(method, gen, reward_fn, captions, lengths, cfg, opt, params, rng, g, meter, ccfg)


# -----------------------------------------------------------------------------
# Table 1 at an equal budget, with the val curves that give Table S9's time to reward.


def tune(method, base_path, reward, root, et_cfg, ccfg, log, device):
    """Fine-tune one method from the pre-trained backbone; select on val -> (model, curve, summary)."""
    gen = models.load_generator(base_path, device)
    cfg = dataclasses.replace(et_cfg, method="chain" if method == "easytune-chain" else "step")
    reward_fn = easytune.RewardFn(reward, gen, root, cfg.reward_form)
    params, theta_prime, opt = easytune.trainable(gen, cfg)
    rng, g = np.random.default_rng(ccfg.seed), torch.Generator(device=device).manual_seed(ccfg.seed)
    train_set = data.MotionTextDataset(root, "train", seed=ccfg.seed)
    meter = metrics.SavedTensorMeter(gen, reward)
    score = lambda: easytune.val_score(gen, reward_fn, root, cfg.sample_steps, max_items=ccfg.val_items)  # noqa
    base = score()
    curve = [{"time_s": 0.0, "updates": 0, "trajectories": 0, "val_reward": base["val_reward"]}]
    best, best_state = None, copy.deepcopy(gen.state_dict())
    budget = ccfg.budget_min * 60
    every = (ccfg.trajectories / ccfg.val_checks) if ccfg.trajectories else budget / ccfg.val_checks
    spent, updates, n, next_check = 0.0, 0, 0, every
    bar = tqdm(total=ccfg.trajectories or round(budget), desc=method, mininterval=2)
    while (n < ccfg.trajectories) if ccfg.trajectories else (spent < budget):
        idx = rng.choice(len(train_set), cfg.batch_size, replace=False)
        batch = data.collate([train_set[int(i)] for i in idx])
        t0 = time.perf_counter()
        recs = trajectory(method, gen, reward_fn, batch["captions"], batch["lengths"].to(device), cfg, opt, params,
                          rng, g, theta_prime, meter, ccfg)
        dt = time.perf_counter() - t0
        spent, n, updates = spent + dt, n + 1, updates + len(recs)
        bar.update(1 if ccfg.trajectories else min(dt, budget - bar.n))
        for r in recs:
            log.write(json.dumps({"method": method, "trajectory": n, "time_s": spent, **r}) + "\n")
        done = (n >= ccfg.trajectories) if ccfg.trajectories else (spent >= budget)
        if (n if ccfg.trajectories else spent) >= next_check or done:
            next_check += every
            s = score()
            curve.append({"time_s": spent, "updates": updates, "trajectories": n, "val_reward": s["val_reward"],
                          "val_reward_fid": s["val_reward_fid"]})
            if easytune.better(s, best, base):
                best, best_state = {**s, "trajectory": n}, copy.deepcopy(gen.state_dict())
    bar.close()
    gen.load_state_dict(best_state)
    return gen, curve, {"updates": updates, "trajectories": n, "time_s": spent, "peak_saved_mib": meter.peak_mib,
                        "selected": None if best is None else {k: v for k, v in best.items() if k != "touched"}}


def time_to_reward(curves, reference="draft-50"):
    """Table S9: the first val check at which each method reaches the reference's final val reward."""
    if reference not in curves:
        return {}
    target = curves[reference][-1]["val_reward"]
    out = {}
    for m, c in curves.items():
        hit = next((p for p in c if p["val_reward"] >= target and p["updates"] > 0), None)
        out[m] = {"target": target, "time_s": hit["time_s"] if hit else None, "updates": hit["updates"] if hit else None}
    ref = out[reference]["time_s"]
    for m in out:
        out[m]["speedup"] = ref / out[m]["time_s"] if ref and out[m]["time_s"] else None
    return out


def easytune_config(ccfg: CompareConfig) -> "easytune.EasyTuneConfig":
    """The easytune.py settings every method of the comparison shares: what the reward reads, the optimiser."""
    # NOTE: on MLD every method scores a clean prediction here (DRaFT/AlignProp/DRTune the final x_0, ReFL
    # and EasyTune the one-step x0_hat, the released code's choice), not easytune.py's noise-aware default.
    # (The paper's Table 1 EasyTune row on MLD, FID 0.132 / MM-Dist 2.637, is Table S11's Noise-Aware one,
    # though Sec. 5.1 pairs Table 1 with the one-step reward.) Table S1 gives every method lr 1e-5.
    # No method has the KL term (the baselines have none), so MLD runs at EasyTune's rate without it, 3e-6
    # (easytune.py's MLD default, 1e-5, pairs with KL 100); MDM at its default, 1e-6.
    fixed = {"kl_weight": 0.0, "reward_input": "x0" if ccfg.backbone == "mld" else "noisy"}
    if ccfg.backbone == "mld" and ccfg.preset != "tiny":
        fixed["lr"] = 3e-6
    return easytune.resolve(easytune.EasyTuneConfig(backbone=ccfg.backbone, preset=ccfg.preset, runs=ccfg.runs,
                                                    data=ccfg.data, device=ccfg.device, seed=ccfg.seed, **fixed),
                            given=set(fixed))


def compare(ccfg: CompareConfig):
    methods = [m.strip() for m in ccfg.methods.split(",") if m.strip()]
    if not methods:
        raise common.InputError(f"--methods {ccfg.methods!r}: no method; choose from {', '.join(METHODS)}")
    for m in methods:
        if m not in METHODS:
            raise common.InputError(f"--methods: unknown method {m!r}; choose from {', '.join(METHODS)}")
    common.check_ranges(ccfg, budget_min="> 0", trajectories=">= 0", val_checks=">= 1", val_items=">= 1",
                      drtune_k=">= 1", drtune_m=">= 1", replications=">= 1", seed=common.SEED)
    device = common.pick_device(ccfg.device)
    common.print_config(ccfg, "compare")
    et_cfg = easytune_config(ccfg)
    run_dir, root, _ = pipeline.prerequisites(et_cfg, device)
    out = os.path.join(run_dir, "compare", ccfg.backbone)
    os.makedirs(out, exist_ok=True)
    base_path = os.path.join(run_dir, f"{ccfg.backbone}.pt")
    reward = spl.load_reward(os.path.join(run_dir, "reward.pt"), device).requires_grad_(False)
    ev = metrics.load_evaluator(os.path.join(run_dir, "evaluator.pt"), device)
    view = f"{ccfg.trajectories} trajectories" if ccfg.trajectories else f"{ccfg.budget_min:g} min"
    path = os.path.join(out, f"results_{'traj' if ccfg.trajectories else 'time'}.json")
    part = path + ".part"                                   # the base and the methods done so far, for --resume
    state = {"config": dataclasses.asdict(ccfg), "device_type": device.type, "results": {}, "curves": {}}
    if common.to_resume(part, ccfg.resume):
        try:
            with open(part) as f:
                saved = json.load(f)
        except ValueError as e:
            raise common.CheckpointError(f"{part}: corrupt ({e}); delete it, or drop --resume") from None
        with common.entries(part):
            common.check_resumable(saved["config"], saved["device_type"], ccfg, part, device)
            state.update(results=dict(saved["results"]), curves=dict(saved["curves"]))
        print(f"resumed {part}: {', '.join(state['results'])} done")
    results, curves = state["results"], state["curves"]
    if "base" not in results:
        results["base"] = metrics.evaluate(models.load_generator(base_path, device), ev, root, ccfg.replications,
                                           ccfg.seed, device)
        common.atomic_write(part, json.dumps(state))
    log_path = os.path.join(out, "log.jsonl")                          # the updates of the methods done, once
    common.keep_lines(log_path, lambda r: r["method"] in curves)
    with open(log_path, "a") as log:
        for m in methods:
            if m in curves:
                continue
            gen, curves[m], summary = tune(m, base_path, reward, root, et_cfg, ccfg, log, device)
            results[m] = {**metrics.evaluate(gen, ev, root, ccfg.replications, ccfg.seed, device), **summary}
            print(f"{m:>15}: {metrics.format_row(results[m])}  ({summary['updates']} updates, "
                  f"{summary['peak_saved_mib']:.1f} MiB)", flush=True)
            log.flush()
            common.atomic_write(part, json.dumps(state))
    ttr = time_to_reward(curves)
    res = {"view": view, "results": results, "curves": curves, "time_to_reward": ttr,
           "config": dataclasses.asdict(ccfg), "easytune_config": dataclasses.asdict(et_cfg),
           "machine": common.machine(device)}                      # a wall-clock budget: the machine sets the table
    common.atomic_write(path, json.dumps(res, indent=1))
    os.remove(part)
    print_compare(res)
    plot({m: ([p["time_s"] for p in c], [p["val_reward"] for p in c]) for m, c in curves.items()},
         "fine-tuning wall time (s)", "val reward", path.replace(".json", ".png"))
    print(f"wrote {path}")
    return res


def print_compare(res):
    print(f"\nTable 1 on the test split at an equal budget ({res['view']}), mean ± 95% CI:")
    print(f"{'':>15} {'R-P top1':>14} {'top3':>14} {'FID':>14} {'MM-Dist':>14} {'updates':>8} {'mem MiB':>8}")
    for m, r in res["results"].items():
        print(f"{m:>15} " + " ".join(f"{r[k]['mean']:>7.3f}±{r[k]['ci']:<6.3f}" for k in ("R1", "R3", "FID", "MMDist"))
              + f" {r.get('updates', 0):>8} {r.get('peak_saved_mib', 0.0):>8.1f}")
    if res["time_to_reward"]:
        print("\nTime to DRaFT-50's final val reward (Table S9):")
        for m, v in res["time_to_reward"].items():
            print(f"{m:>15}: " + (f"{v['time_s']:.0f}s, {v['updates']} updates, x{v['speedup']:.1f} vs DRaFT-50"
                                  if v["time_s"] else "not reached"))


def plot(series, xlabel, ylabel, png, log=False):
    """{label: (xs, ys)} as one line plot (optional: needs matplotlib; without it, a note, not an error)."""
    import viz
    try:
        plt = viz._plt()
    except common.InputError:
        print(f"matplotlib not installed: no {png} (pip install matplotlib)")
        return
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, marker=".", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.legend(fontsize=6)
    fig.savefig(png, dpi=120, bbox_inches="tight")
    print(f"wrote {png}")


# -----------------------------------------------------------------------------
# Figure 6: peak saved-tensor memory against T.


def dummy_models(preset, backbone, device):
    """Untrained models of the preset's size (saved-tensor memory does not depend on the weights)."""
    caps = pipeline.PROMPTS
    vocab = data.Vocab.build(caps)
    mp = models.PRESETS[preset][0]
    gen = models.build_model(models.ModelConfig(backbone=backbone, **models.BACKBONE_DEFAULTS[backbone], **mp),
                             vocab).to(device).eval()                # MDM: its own sampler (eta 1, guidance 2.5)
    gen.mean, gen.std = torch.zeros(263, device=device), torch.ones(263, device=device)
    reward = spl.Reward(dataclasses.replace(spl.RewardConfig(), **spl.PRESETS[preset]), vocab, 263).to(device).eval()
    return gen, reward.requires_grad_(False), caps


def memory(steps, preset="default", backbone="mld", batch_size=8, methods=METHODS, device="cpu", seed=0):
    """{method: {T: {"saved_mib", "cuda_peak_mib"}}} for one trajectory of each method at each T.
    NOTE: torch.utils.checkpoint installs saved-tensor hooks of its own, so the meter does not see
    inside AlignProp's checkpointed denoiser calls: its saved_mib counts the decoder and reward graph
    only; the true peak adds K stored latents and one recomputed step (the CUDA peak sees them)."""
    gen0, reward, caps = dummy_models(preset, backbone, device)
    out = {}
    for m in methods:
        out[m] = {}
        for T in steps:
            gen = copy.deepcopy(gen0)
            cfg = easytune.EasyTuneConfig(backbone=backbone, sample_steps=T, batch_size=batch_size,
                                          reward_input="x0" if backbone == "mld" else "noisy",
                                          method="chain" if m == "easytune-chain" else "step")
            reward_fn = easytune.RewardFn(reward, gen, caps)
            params, theta_prime, opt = easytune.trainable(gen, cfg)
            meter = metrics.SavedTensorMeter(gen, reward)
            captions = [caps[i % len(caps)] for i in range(batch_size)]
            lengths = torch.full((batch_size,), 80, device=device)
            rng, g = np.random.default_rng(seed), torch.Generator(device=device).manual_seed(seed)
            run = lambda: trajectory(m, gen, reward_fn, captions, lengths, cfg, opt, params, rng, g, theta_prime,  # noqa
                                     meter)
            if torch.device(device).type == "cuda":
                _, cuda = metrics.cuda_peak_mib(run)
            else:
                run()
                cuda = None
            out[m][str(T)] = {"saved_mib": meter.peak_mib, "cuda_peak_mib": cuda}
            print(f"{m:>15} T={T:<4} saved {meter.peak_mib:9.2f} MiB" + (f", CUDA peak {cuda:.0f} MiB" if cuda else ""),
                  flush=True)
    return out


# -----------------------------------------------------------------------------
# Figure 3: Jacobians along the chain (Eq. 5's coefficients), the product DRaFT-style methods carry.
#   NOTE (deviation): Figure 3's axis divides by dim(.) itself; sqrt(dim) makes a Frobenius norm an RMS gain
#   (the identity scores 1), so the magnitudes here are not the paper's plot's (the shapes compare).


def jacobian_norms(model, texts, lengths, steps=50, probes=8, seed=0):
    """Along one sampled trajectory, for each step t (sampling order, first = pure noise):
      step[t]    ||d pi(x_t) / d x_t||_F / sqrt(dim)          (the factor of one step)
      product[t] ||d x_0 / d x_t||_F / sqrt(dim)              (Eq. 5's product from step t to the end)
    with dim an item's real (unpadded) entries, averaged over items.
    Frobenius norms are estimated with `probes` Gaussian vectors (Hutchinson: E||v^T J||^2 = ||J||_F^2),
    the products by propagating each probe backwards through the chain with vector-Jacobian products."""
    g = torch.Generator(device=model.device).manual_seed(seed)
    with torch.no_grad():
        cond = model.condition(texts, lengths)
        model.scheduler.set_timesteps(steps)
        xs, x = [], model.init_noise(cond, g)
        for t in model.scheduler.timesteps:
            xs.append(x)
            x, _ = model.denoise_step(x, t, cond, eta=0.0)

    def vjp(i, v):
        x_in = xs[i].detach().requires_grad_()
        out, _ = model.denoise_step(x_in, model.scheduler.timesteps[i], cond, eta=0.0)
        return torch.autograd.grad(out, x_in, v)[0]

    n_real = model.mask_latent(torch.ones_like(xs[0]), cond).flatten(1).sum(1)     # (B,) real entries per item
    step_sq, prod_sq = np.zeros(steps), np.zeros(steps)
    for _ in range(probes):
        v_chain = model.mask_latent(torch.randn(xs[0].shape, generator=g, device=model.device), cond)
        for i in reversed(range(steps)):                                   # from the last step backwards
            v = model.mask_latent(torch.randn(xs[0].shape, generator=g, device=model.device), cond)
            step_sq[i] += ((vjp(i, v) ** 2).flatten(1).sum(1) / n_real).mean().item()
            v_chain = vjp(i, v_chain)
            prod_sq[i] += ((v_chain ** 2).flatten(1).sum(1) / n_real).mean().item()
    return {"t": model.scheduler.timesteps.tolist(), "step": np.sqrt(step_sq / probes).tolist(),
            "product": np.sqrt(prod_sq / probes).tolist()}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("compare", help="Table 1 (+ Table S9, Figure S1) at an equal budget")
    common.add_config_args(c, CompareConfig)
    mm = sub.add_parser("memory", help="Figure 6: peak saved-tensor memory against T")
    mm.add_argument("--steps", default="10,20,50,100")
    mm.add_argument("--preset", default="default", choices=["tiny", "default"])
    mm.add_argument("--backbone", default="mld", choices=["mld", "mdm"])
    mm.add_argument("--batch-size", type=int, default=8)
    mm.add_argument("--methods", default=",".join(METHODS))
    mm.add_argument("--json", default=None, help="also write the rows and the machine here, and a plot beside")
    mm.add_argument("--device", default="auto")
    v = sub.add_parser("vanish", help="Figure 3: Jacobian norms along the base model's chain")
    v.add_argument("--backbone", default="mld", choices=["mld", "mdm"])
    v.add_argument("--runs", default="runs/synth", help="reads <runs>/<backbone>.pt, writes vanish_<backbone>.json "
                   "and .png there")
    v.add_argument("--generator", default=None, help="another checkpoint to read (e.g. a tuned one); writes "
                   "<generator>_vanish.json and .png beside it")
    v.add_argument("--steps", type=int, default=50)
    v.add_argument("--probes", type=int, default=4)
    v.add_argument("--device", default="auto")
    a = p.parse_args()
    if a.cmd == "compare":
        compare(common.config_from_args(CompareConfig, a))
    elif a.cmd == "memory":
        try:
            steps = [int(s) for s in a.steps.split(",")]
        except ValueError:
            raise common.InputError(f"--steps {a.steps!r}: comma-separated integers such as 10,20,50,100") from None
        if not all(1 <= s <= 999 for s in steps):
            raise common.InputError(f"--steps {a.steps}: each must be in 1..999")
        common.check_ranges(a, batch_size=">= 1")
        if a.json:
            common.output_path(a.json, "--json", (".json",))
        methods = [m.strip() for m in a.methods.split(",")]
        for m in methods:
            if m not in METHODS:
                raise common.InputError(f"--methods: unknown method {m!r}; choose from {', '.join(METHODS)}")
        device = common.pick_device(a.device)
        res = memory(steps, a.preset, a.backbone, a.batch_size, methods, device)
        if a.json:
            common.atomic_write(a.json, json.dumps({**res, "machine": common.machine(device)}, indent=1))
            plot({m: ([int(t) for t in row], [v["saved_mib"] for v in row.values()]) for m, row in res.items()},
                 "sampling steps T", "peak saved-tensor memory (MiB)", os.path.splitext(a.json)[0] + ".png", log=True)
    else:
        common.check_ranges(a, steps=(1, 999), probes=">= 1")
        device = common.pick_device(a.device)
        if a.generator:                                           # another checkpoint: its figures beside it
            path, out = a.generator, f"{os.path.splitext(a.generator)[0]}_vanish"
        else:
            path, out = os.path.join(a.runs, f"{a.backbone}.pt"), os.path.join(a.runs, f"vanish_{a.backbone}")
        common.output_path(f"{out}.json", "--generator" if a.generator else "--runs")
        gen = models.load_generator(path, device)
        res = jacobian_norms(gen, ["a person walks forward and then turns left"], [80], a.steps, a.probes)
        print(f"{'i':>3} {'t':>4} {'|d pi/d x_t|':>13} {'|d x_0/d x_t| (Eq. 5)':>22}")
        for i, (t, s, pr) in enumerate(zip(res["t"], res["step"], res["product"])):
            print(f"{i:>3} {t:>4} {s:>13.4f} {pr:>22.4f}")
        common.atomic_write(f"{out}.json", json.dumps({**res, "machine": common.machine(device)}, indent=1))
        steps = list(range(a.steps))
        plot({"per step |d pi / d x_t| / sqrt(d)": (steps, res["step"]),
              "product to x_0 (Eq. 5)": (steps, res["product"])},
             "denoising step (0 = pure noise)", "Jacobian norm / sqrt(d)", f"{out}.png")


if __name__ == "__main__":
    common.cli(main)
