"""
synth.py -- the embedded benchmark: procedural text-motion clips in HumanML3D's exact format.

The paper measures alignment on HumanML3D (Sec. 5.1). It cannot be shipped, so this file writes a
stand-in that a compact generator does *not* solve perfectly: the 17 parameterised primitives of
primitives.py (whose attributes change the motion: left vs right, direction, speed, count, angle),
composed 1-3 per clip with blended transitions, each clip described by 3-4 paraphrases and mirrored
left-right.

How a clip is made:
  1. sample 1-3 primitives and their parameters; each returns per-frame joint angles E (n, 22, 3)
     as (flexion X, abduction Z, twist Y) in radians, a yaw rate, and an airborne lift (primitives.py);
  2. cross-fade the segments over 0.3-0.5 s and add per-clip style (tempo, amplitude, posture);
  3. forward kinematics on the 22-joint skeleton (data.T2M_BONE_OFFSETS, scipy rotations);
  4. ground contact: each frame's lowest foot joint is put on the floor (plus the lift in a jump),
     and the lowest foot is held in place while the root moves (no foot sliding, no sinking);
  5. data.features_from_joints turns the joints into the 263-d features; the mirror is the same
     joints reflected (data.mirror_joints) with left/right swapped in the captions.
Each primitive names itself in (verb, rest) phrases; captions.py inflects, tags and joins them.

Run:  python data.py synth --out data/synth --motions 1600 --seed 0   (writes it; data.py checks it)
      python synth.py --show 3 --seed 0                               (prints its first clips)
"""
from __future__ import annotations

import os
import re
import shutil
import time

import numpy as np
from scipy.spatial.transform import Rotation
from tqdm import tqdm

import captions
import common
import data
from primitives import BY_NAME, FOOT_JOINTS, FPS, J, LIMB, LOCOMOTION, PRIMITIVES, sample_style

# -----------------------------------------------------------------------------
# One clip: segments -> blended angles -> forward kinematics -> grounded joints.


def forward_kinematics(E, yaw):
    """E (T, 22, 3) local angles (X, Z, Y), yaw (T,) heading -> (T, 22, 3) positions, root at origin."""
    T = len(E)
    R = Rotation.from_euler("XZY", E.reshape(-1, 3)).as_matrix().reshape(T, J, 3, 3)
    G = [None] * J
    P = np.zeros((T, J, 3))
    G[0] = Rotation.from_rotvec(yaw[:, None] * np.array([0.0, 1.0, 0.0])).as_matrix() @ R[:, 0]
    for j, parent in enumerate(data.HUMANML3D.parents):
        if parent < 0:
            continue
        P[:, j] = P[:, parent] + G[parent] @ data.T2M_BONE_OFFSETS[j]
        G[j] = G[parent] @ R[:, j]
    return P


def ground(P, lift, push, yaw):
    """Put the lowest foot joint on the floor (+ lift when airborne) and move the root so that the
    supporting foot stays where it is; in the air the root keeps its momentum plus any push."""
    T = len(P)
    foot_y = P[:, FOOT_JOINTS, 1]
    root = np.zeros((T, 3))
    root[:, 1] = lift - foot_y.min(1)
    vel = np.zeros(2)
    for t in range(1, T):
        if lift[t] <= 0 and lift[t - 1] <= 0:
            s = FOOT_JOINTS[int(np.argmin(foot_y[t - 1]))]
            step = -(P[t, s, [0, 2]] - P[t - 1, s, [0, 2]])
            vel = step
        else:
            c, s_ = np.cos(yaw[t]), np.sin(yaw[t])
            step = vel + np.array([c * push[t, 0] + s_ * push[t, 1], -s_ * push[t, 0] + c * push[t, 1]]) / FPS
        root[t, [0, 2]] = root[t - 1, [0, 2]] + step
    return P + root[:, None]


def compose(segments, overlap):
    """Lay segments on one timeline, consecutive ones overlapping by `overlap` frames and
    cross-faded there; returns the blended (E, yaw_rate, lift, push) and each segment's start."""
    starts, t = [], 0
    for seg in segments:
        starts.append(t)
        t += seg.n - overlap
    T = t + overlap
    acc = {"E": np.zeros((T, J, 3)), "yaw_rate": np.zeros(T), "lift": np.zeros(T), "push": np.zeros((T, 2))}
    wsum = np.zeros(T)
    for s0, seg in zip(starts, segments):
        w = np.ones(seg.n)
        ramp = np.linspace(0, 1, overlap + 2)[1:-1]
        if s0 > 0:
            w[:overlap] = ramp
        if s0 + seg.n < T:
            w[-overlap:] = ramp[::-1]
        for k in acc:
            v = getattr(seg, k)
            wk = np.ones(seg.n) if k == "yaw_rate" else w
            acc[k][s0:s0 + seg.n] += wk.reshape((-1,) + (1,) * (v.ndim - 1)) * v
        wsum[s0:s0 + seg.n] += w
    for k in ("E", "lift", "push"):
        acc[k] /= wsum.reshape((-1,) + (1,) * (acc[k].ndim - 1))
    # yaw increments are not averaged but summed, so a turn keeps its full angle through a cross-fade
    return acc["E"], acc["yaw_rate"], acc["lift"], acc["push"], starts


def make_clip(rng, max_frames=120, min_frames=40):
    """-> {"joints": (T+1, 22, 3) metres, "lines": caption lines (whole clip, sub-spans),
    "primitives": names, "airborne": (T+1,) bool}."""
    style = sample_style(rng)
    names, weights = [p.name for p in PRIMITIVES], np.array([p.weight for p in PRIMITIVES])
    for _ in range(100):
        k = int(rng.choice([1, 2, 3], p=[0.35, 0.45, 0.2]))
        chosen = []
        while len(chosen) < k:
            name = names[rng.choice(len(names), p=weights / weights.sum())]
            if (chosen and name == chosen[-1]) or (name == "stand" and (k == 1 or "stand" in chosen)):
                continue
            chosen.append(name)
        params = [BY_NAME[n].sample(rng) for n in chosen]
        segs = [BY_NAME[n].make(p, style, rng) for n, p in zip(chosen, params)]
        overlay = None
        for i, n in enumerate(chosen):                          # "walks forward while waving"
            if n in LOCOMOTION and rng.random() < 0.25:
                oprim = BY_NAME[rng.choice(["wave", "raise"])]
                op = oprim.sample(rng)
                oseg = oprim.make(op, style, rng, n=segs[i].n)
                arms = [j for side in (["left", "right"] if op["side"] == "both" else [op["side"]])
                        for j in (LIMB[side]["sh"], LIMB[side]["el"])]
                segs[i].E[:, arms] = oseg.E[:, arms]
                overlay = (i, oprim, op)
                break
        overlap = int(rng.uniform(0.3, 0.5) * FPS)            # idle lead-in and tail, then cross-fades
        pads = [BY_NAME["stand"].make({}, style, rng, n=overlap + int(rng.uniform(0.1, 0.5) * FPS)) for _ in "ab"]
        E, yaw_rate, lift, push, starts = compose([pads[0]] + segs + [pads[1]], overlap)
        if min_frames + 1 <= len(E) <= max_frames + 1:
            break
    else:
        raise RuntimeError("make_clip: no composition fits the length limits")  # unreachable in practice
    yaw = np.cumsum(yaw_rate) + rng.uniform(-np.pi, np.pi)
    joints = ground(forward_kinematics(E, yaw), lift, push, yaw)

    # captions: 3-4 paraphrases of the whole clip, sometimes one more for a single segment's span
    lines, seen = [], set()
    for _ in range(20):
        phrases = []
        for i, (n, p) in enumerate(zip(chosen, params)):
            if n == "stand" and rng.random() < 0.5:
                continue                                        # idle segments are often not mentioned
            verb, rest = captions.pick(BY_NAME[n].phrases(p), rng)
            if overlay and overlay[0] == i:                     # the overlay is always in the -ing form
                o_verb, o_rest = captions.pick(overlay[1].phrases(overlay[2]), rng)
                o_rest = re.sub(r"<(\w+)>", lambda m: captions.VERBS[m.group(1)][1], o_rest)
                rest = f"{rest} while {captions.VERBS[o_verb][1]} {o_rest}".strip()
            phrases.append((verb, rest))
        line = data.format_caption_line(captions.caption(phrases, rng))
        if line not in seen:
            seen.add(line)
            lines.append(line)
        if len(lines) >= 3 + (rng.random() < 0.4):
            break
    if len(chosen) > 1 and rng.random() < 0.3:
        i = int(rng.integers(len(chosen)))
        a, b = starts[i + 1], starts[i + 1] + segs[i].n
        if b - a >= 40 and chosen[i] != "stand" and not (overlay and overlay[0] == i):
            verb, rest = captions.pick(BY_NAME[chosen[i]].phrases(params[i]), rng)
            subj = captions.SUBJECTS[rng.integers(len(captions.SUBJECTS))]
            toks = captions.words_of(subj[0]) + captions.render((verb, rest), "3sg", subj[2])
            lines.append(data.format_caption_line(toks, a / FPS, b / FPS))
    return {"joints": joints, "lines": lines, "primitives": chosen, "airborne": lift > 0}


WRITTEN = {"new_joint_vecs", "new_joints", "texts", "Mean.npy", "Std.npy", "train.txt", "val.txt", "test.txt", "all.txt"}


def write_dataset(out, n_motions, seed):
    """Write n_motions clips and their mirrors (M-prefixed) in HumanML3D's layout, with an
    80 / 5 / 15 train / val / test split by clip (a clip and its mirror share a split). The folder is
    built as <out>.partial and moved into place at the end: an interrupted run leaves nothing at `out`."""
    if os.path.exists(out) and not (os.path.isdir(out) and not os.listdir(out)):
        raise common.InputError(f"--out {out}: exists and is not an empty folder; give a new one (nothing was written)")
    t0, final, out = time.time(), out, out.rstrip("/") + ".partial"
    if os.path.exists(out) and not (os.path.isdir(out) and set(os.listdir(out)) <= WRITTEN):
        raise common.InputError(f"{out}: exists and holds what synth does not write, so it is not an interrupted "
                                "run's to remove; move it (nothing was written)")
    shutil.rmtree(out, ignore_errors=True)                      # an interrupted run's: ours to remove
    for sub in ("new_joint_vecs", "new_joints", "texts"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    seeds = np.random.SeedSequence(seed).spawn(n_motions)       # clip i depends only on (seed, i)
    train_feats, names = [], []
    order = np.random.default_rng(seed).permutation(n_motions)
    split_of = {}
    for rank, i in enumerate(order):
        split_of[i] = "test" if rank < 0.15 * n_motions else "val" if rank < 0.20 * n_motions else "train"
    splits = {"train": [], "val": [], "test": []}
    for i in tqdm(range(n_motions), desc=f"synth {final}", unit="clip"):
        clip = make_clip(np.random.default_rng(seeds[i]))
        joints, lines = clip["joints"], clip["lines"]
        for name, jts, text in ((f"{i:06d}", joints, lines),
                                (f"M{i:06d}", data.mirror_joints(joints), [data.mirror_text(ln) for ln in lines])):
            feats, jts_out = data.features_from_joints(jts)
            np.save(os.path.join(out, "new_joint_vecs", f"{name}.npy"), feats)
            np.save(os.path.join(out, "new_joints", f"{name}.npy"), jts_out)
            with open(os.path.join(out, "texts", f"{name}.txt"), "w") as f:
                f.write("\n".join(text) + "\n")
            splits[split_of[i]].append(name)
            names.append(name)
            if split_of[i] == "train":
                train_feats.append(feats)
    # NOTE (deviation): HumanML3D's statistics are over the whole dataset; these use the train split.
    mean, std = data.mean_std(train_feats, data.HUMANML3D.joints)
    np.save(os.path.join(out, "Mean.npy"), mean)
    np.save(os.path.join(out, "Std.npy"), std)
    for split, ns in list(splits.items()) + [("all", names)]:
        with open(os.path.join(out, f"{split}.txt"), "w") as f:
            f.write("\n".join(ns) + "\n")
    if os.path.isdir(final):
        os.rmdir(final)                                             # empty (checked above)
    os.replace(out, final)
    print(f"wrote {len(names)} clips ({n_motions} + mirrors) to {final} in {time.time() - t0:.1f}s")


def main():
    """Print a few clips as write_dataset makes them (clip i of --seed is the dataset's clip i):
    the primitives, the length, each caption line in HumanML3D's format and the mirror's first line."""
    import argparse
    p = argparse.ArgumentParser(description="show what the benchmark's clips are made of (write one with "
                                            "python data.py synth --out DIR)")
    p.add_argument("--show", type=int, default=3, help="how many clips (default 3)")
    p.add_argument("--seed", type=int, default=0, help="the dataset's seed")
    a = p.parse_args()
    common.check_ranges(a, show=">= 1", seed=common.SEED)
    for i, s in enumerate(np.random.SeedSequence(a.seed).spawn(a.show)):
        clip = make_clip(np.random.default_rng(s))
        print(f"clip {i:06d}: {' + '.join(clip['primitives'])}, {len(clip['joints']) - 1} frames")
        for line in clip["lines"]:
            print(f"    {line}")
        print(f"    mirror: {data.mirror_text(clip['lines'][0])}")


if __name__ == "__main__":
    common.cli(main)
