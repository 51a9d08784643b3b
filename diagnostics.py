"""
diagnostics.py -- where the MLD result comes from: two measurements that are not in the paper and that
train and select nothing (README, "What the reward does not see" and "Not the frozen VAE, and not
roughness").

  stats    motion_stats(): per part of the HumanML3D vector (root, positions, rotations, velocities,
           feet), the mean level |x| and frame-to-frame change |x_{f+1} - x_f| of real clips and of each
           generator's samples for the same captions and lengths. It reads neither the evaluator nor the
           reward, so it can say what fine-tuning changed when those two disagree.
  probe    on metrics.evaluate()'s own draws (so its "samples" row is evaluate()'s), R-P top-1/3, FID and
           MM-Dist of the real motions, their reconstructions decode(encode(x)) through MLD's frozen VAE
           (what the latent space EasyTune leaves alone can express), the samples, and the samples
           low-passed in time (does the evaluator object to their roughness?).

Run:  python diagnostics.py stats --data data/synth --generator runs/synth/mld.pt runs/synth/easytune_mld/best.pt
      python diagnostics.py probe --generator runs/synth/mld.pt --evaluator runs/synth/evaluator.pt --data data/synth
"""
from __future__ import annotations

import argparse
import time
from collections import defaultdict

import numpy as np
import torch
from tqdm import tqdm

import common
import data
import metrics


@torch.no_grad()
def motion_stats(feats, mask):
    """Mean |x| ("level") and mean |x_{f+1} - x_f| ("change") per part of the HumanML3D vector, over
    the real frames of normalised features (B, T, D), mask (B, T). It reads neither the evaluator nor
    the reward, so it can say what fine-tuning changed when those two disagree. -> {part: (level, change)}"""
    J = (feats.shape[-1] + 1) // 12                       # D = 12 J - 1: 263 -> 22 joints, 251 -> 21
    parts = {"root": 4, "positions": 3 * (J - 1), "rotations": 6 * (J - 1), "velocities": 3 * J, "feet": 4}
    m = mask[..., None].float()
    dm = m[:, 1:] * m[:, :-1]
    change = (feats[:, 1:] - feats[:, :-1]).abs() * dm
    out, s = {}, 0
    for name, n in parts.items():
        out[name] = (float((feats[..., s:s + n].abs() * m).sum() / (m.sum() * n)),
                     float(change[..., s:s + n].sum() / (dm.sum() * n)))
        s += n
    return out


def stats_table(generators, root, split="val", items=128, steps=50, seed=0, device="cpu"):
    """motion_stats of the real clips and of each generator's samples for the same captions and lengths.
    -> (rows, the number of clips: items, or fewer if the split has fewer)"""
    import models
    ds = data.MotionTextDataset(root, split, seed=seed, deterministic=True)
    b = data.collate([ds[i] for i in range(min(items, len(ds)))])
    lengths, mask = b["lengths"].to(device), b["mask"].to(device)
    mean, std = (torch.as_tensor(v, dtype=torch.float32, device=device) for v in (ds.mean, ds.std))
    rows = {"real": motion_stats(b["motion"].to(device), mask)}
    gens = {path: models.load_generator(path, device) for path in generators}  # all read before any sampling
    for path, gen in gens.items():
        data.check_scored(root, split, path, gen.mean, gen.vocab.itos)           # it reads root's captions
    for path, gen in gens.items():
        x = gen.sample(b["captions"], lengths, steps=steps, generator=torch.Generator(device=device).manual_seed(seed))
        rows[path] = motion_stats((x * gen.std + gen.mean - mean) / std * mask[..., None], mask)
    return rows, len(lengths)


def smooth_in_time(feats, lengths, sigma):
    """Gaussian low-pass along time (sigma in frames) over each clip's real frames; padding untouched.
    feats (N, T, D) -> the same shape, float32 numpy."""
    from scipy.ndimage import gaussian_filter1d
    out = np.array(feats, dtype=np.float32)
    for i, n in enumerate(np.asarray(lengths).tolist()):
        out[i, :n] = gaussian_filter1d(out[i, :n], sigma, axis=0, mode="nearest")
    return out


@torch.no_grad()
def probe(generator, evaluator, root, replications=3, seed=0, device="cpu", split="test", sigma=2.0):
    """Where does a generator lose to the real motions? On evaluate()'s draws (the same captions, crops,
    groups and noise, so "samples" is evaluate()'s row), R-P top-1/3, FID and MM-Dist of:
      real              the split's motions (FID against themselves: 0);
      reconstruction    decode(encode(x)) of the same motions through the generator's frozen VAE (the
                        posterior mean; MLD only): what its latent space can express, since EasyTune
                        tunes only the denoiser;
      samples           the generator's samples;
      samples smoothed  the same samples low-passed in time (Gaussian, sigma frames): does the evaluator
                        object to their frame-to-frame roughness ("What the reward does not see")?
    Not in the paper: a diagnostic of the MLD result; it trains and selects nothing."""
    rows = defaultdict(lambda: defaultdict(list))
    smoothed = f"samples smoothed (sigma {sigma:g})"
    for r in tqdm(range(replications), desc="probe", mininterval=2):
        text, real, (fake,), (b, real_x, (fake_x,), emb) = metrics.embed_split(
            evaluator, root, split, seed + r, device, generators=[generator], gen_seed=seed * 1000 + r, keep=True)
        lengths, mask = b["lengths"].to(device), b["mask"].to(device)
        x_s = torch.as_tensor(smooth_in_time(fake_x.cpu().numpy(), lengths.cpu(), sigma), device=device)
        cells = {"real": real, "samples": fake, smoothed: emb(x_s * mask[..., None])}
        if hasattr(generator, "encode"):                                  # MLD: through its frozen VAE
            x = (real_x - generator.mean) / generator.std * mask[..., None]                  # (N, T, 263)
            z0 = generator.encode(x, mask)[0] * generator.latent_scale                       # (N, T/4, latent)
            cells["reconstruction"] = emb((generator.decode(z0, mask) * generator.std + generator.mean)
                                          * mask[..., None])
        for name, e in cells.items():
            (r1, _, r3), mmd = metrics.r_precision(text, e, np.random.default_rng(seed + r))  # evaluate()'s groups
            for k, v in zip(("R1", "R3", "FID", "MMDist"), (r1, r3, 0.0 if e is real else metrics.fid(e, real), mmd)):
                rows[name][k].append(v)
    return {name: {k: metrics.confidence(v) for k, v in rows[name].items()}
            for name in ("real", "reconstruction", "samples", smoothed) if name in rows}


# -----------------------------------------------------------------------------


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    st = sub.add_parser("stats", help="feature level and frame-to-frame change, real vs generated (no evaluator)")
    st.add_argument("--generator", nargs="+", required=True)
    st.add_argument("--data", required=True)
    st.add_argument("--split", default="val")
    st.add_argument("--items", type=int, default=128)
    st.add_argument("--device", default="auto")
    pr = metrics.scored(sub, "probe", "real motions, the frozen VAE's reconstructions (MLD), samples, smoothed samples")
    pr.add_argument("--sigma", type=float, default=2.0, help="frames; the smoothing's Gaussian width")
    a = p.parse_args()
    rules = {"replications": ">= 1", "sigma": (0.01, 200.0), "items": ">= 1", "seed": common.SEED}
    common.check_ranges(a, **{k: rule for k, rule in rules.items() if hasattr(a, k)})  # before any work
    device = common.pick_device(a.device)
    if a.cmd == "probe":
        t0 = time.time()
        (gen,), ev = metrics.loaded(a, device)
        rows = probe(gen, ev, a.data, a.replications, a.seed, device, a.split, a.sigma)
        for name, row in rows.items():
            print(f"{name:>28}: " + "  ".join(f"{k} {v['mean']:.3f}±{v['ci']:.3f}" for k, v in row.items()))
        print(f"({a.split} split, {a.replications} replications, {time.time() - t0:.0f}s)")
    else:
        rows, n = stats_table(a.generator, a.data, a.split, a.items, device=device)
        parts = list(rows["real"])
        print(f"{a.split}, {n} clips; per part: mean |x| / mean |x_f+1 - x_f| (normalised features)")
        print(f"{'':>40} " + " ".join(f"{p:>17}" for p in parts))
        for name, row in rows.items():
            print(f"{name[-40:]:>40} " + " ".join(f"{row[p][0]:>8.3f}/{row[p][1]:<8.3f}" for p in parts))


if __name__ == "__main__":
    common.cli(main)
