"""
metrics.py -- the yardstick: an independent T2M-style evaluator, the paper's metrics, and memory and time
meters (Figure 3's Jacobian norms are in baselines.py, beside the comparisons they explain).

Paper Sec. 5.1 and Table 1 report R-Precision top-1/2/3, FID, MM-Dist and Diversity computed with the
T2M evaluator (Guo et al. 2022), plus peak memory. This file rebuilds that protocol:

  Evaluator   a movement encoder (two strided 1-D convolutions, time / 4) + bidirectional GRU over the
              motion features without the 4 contact channels, and a bidirectional GRU over the caption's
              'lemma/POS' tokens (a learned word embedding + a projected 15-class POS one-hot, with T2M's
              VIP classes), trained with T2M's margin loss (positive pairs pulled together, other pairs
              pushed beyond a margin of 10). Embeddings are not normalised; distances are Euclidean.
              It is a different architecture from the reward (spl.py: transformers over words), reads
              different text tokens, and is trained separately. It never trains or selects anything.
  Metrics     R-Precision over shuffled groups of 32, MM-Dist (mean text-motion distance of true pairs),
              FID on evaluator motion embeddings (np.cov, scipy sqrtm, the eps retry, an error on a large
              imaginary part), Diversity over 300 random pairs, MultiModality (100 captions x 30 samples,
              10 pairs); each replication re-draws captions and crops; mean +/- 1.96 std / sqrt(n).
  compare()   two generators item by item on the same draws, with a 95% interval from resampling the
              split's source motions (not in the paper: its +/- covers replications, not which clips);
              with --reward, also how much of what the evaluator holds against a generator the reward can see.
  Meters      SavedTensorMeter: peak bytes of tensors autograd keeps for backward (parameters excluded,
              shared storage counted once, frees tracked), identical on every device; cuda_peak_mib()
              for the allocator's view on a GPU.

NOTE (deviations): word embeddings are learned here (T2M uses GloVe, a download); sizes are smaller
and training is ~600 steps (a minute on 2 cores); the evaluator normalises with the dataset's Mean/Std
(T2M's own statistics differ by a x25 bug).

Run:  python metrics.py train-evaluator --data data/synth --out runs/synth/evaluator.pt   # [--resume]
      python metrics.py eval --generator runs/synth/mld.pt --evaluator runs/synth/evaluator.pt --data data/synth
          [--json rows.json [--resume]]      # 20 replications (T2M's); a stopped one goes on from rows.json.part
      python metrics.py compare --generator runs/synth/mld.pt runs/synth/easytune_mld/best.pt \\
          --evaluator runs/synth/evaluator.pt --data data/synth [--reward runs/synth/reward.pt]
(diagnostics.py holds the diagnostics of the MLD result that are not in the paper: stats and probe.)
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import warnings
import weakref
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import common
import data

# -----------------------------------------------------------------------------
# The evaluator's text side: 'lemma/POS' tokens, T2M's 15 POS classes with the VIP word lists.

POS = ["VERB", "NOUN", "DET", "ADP", "NUM", "AUX", "PRON", "ADJ", "ADV",
       "Loc_VIP", "Body_VIP", "Obj_VIP", "Act_VIP", "Desc_VIP", "OTHER"]
VIP = {"Loc_VIP": "left right clockwise counterclockwise anticlockwise forward back backward up down straight curve",
       "Body_VIP": "arm chin foot feet face hand mouth leg waist eye knee shoulder thigh",
       "Obj_VIP": "stair dumbbell chair window floor car ball handrail baseball basketball",
       "Act_VIP": "walk run swing pick bring kick put squat throw hop dance jump turn stumble stop sit lift lower "
                  "raise wash stand kneel stroll rub bend balance flap jog shuffle lean rotate spin spread climb",
       "Desc_VIP": "slowly carefully fast careful slow quickly happy angry sad happily angrily sadly"}
VIP_OF = {w: c for c, ws in VIP.items() for w in ws.split()}
MAX_TOKENS = 20   # T2M: sos + 20 tokens + eos


def word_vocab(root: str) -> list:
    """Lemmas of the training captions' tokens (not data.Vocab's surface words): the evaluator reads
    different text units from the generator and the reward."""
    counts = defaultdict(int)
    for name in data.read_split(root, "train"):
        for _, tokens, _, _ in data.load_captions(root, name):
            for t in tokens:
                counts[data.lemma(t)] += 1
    return ["<pad>", "<unk>", "<sos>", "<eos>"] + sorted(counts, key=lambda w: (-counts[w], w))


def encode_tokens(token_lists: list, stoi: dict):
    """-> word ids (B, L), POS ids (B, L), lengths (B,) with <sos> ... <eos> around at most 20 tokens."""
    rows = []
    for tokens in token_lists:
        pairs = [t.rsplit("/", 1) for t in tokens[:MAX_TOKENS]]
        words = [2] + [stoi.get(w, 1) for w, _ in pairs] + [3]
        pos = [14] + [POS.index(VIP_OF.get(w, p if p in POS else "OTHER")) for w, p in pairs] + [14]
        rows.append((words, pos))
    L = max(len(w) for w, _ in rows)
    ids = torch.zeros(len(rows), L, dtype=torch.long)
    pos = torch.full((len(rows), L), 14, dtype=torch.long)
    for i, (w, p) in enumerate(rows):
        ids[i, :len(w)], pos[i, :len(p)] = torch.tensor(w), torch.tensor(p)
    return ids, pos, torch.tensor([len(w) for w, _ in rows])


class _Head(nn.Module):
    """BiGRU over a sequence -> last forward and backward states -> Linear, LayerNorm, LeakyReLU, Linear."""

    def __init__(self, d_in, hidden, out):
        super().__init__()
        self.gru = nn.GRU(d_in, hidden, batch_first=True, bidirectional=True)
        self.out = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.LayerNorm(hidden), nn.LeakyReLU(0.2),
                                 nn.Linear(hidden, out))

    def forward(self, x, lengths):
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, h = self.gru(packed)                                            # (2, B, hidden)
        return self.out(torch.cat([h[0], h[1]], -1))


@dataclass
class EvaluatorConfig:
    data: str = "data/synth"
    out: str = "runs/synth/evaluator.pt"
    preset: str = "default"          # tiny | default
    hidden: int = 128                # T2M: conv 512, GRU 1024 (motion) / 512 (text)
    word_dim: int = 64               # T2M: GloVe 300
    out_dim: int = 256               # T2M: 512
    margin: float = 10.0             # T2M's contrastive margin
    steps: int = 600                 # about 1 minute on 2 cores
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 1234                 # not the generator's or the reward's seed
    device: str = "auto"
    ckpt_every: int = 200            # the run's state to <out>.part, for --resume
    resume: bool = False             # continue from <out>.part, exactly as if not stopped


EVALUATOR_PRESETS = {"tiny": {"hidden": 64, "word_dim": 32, "out_dim": 64, "steps": 200, "batch_size": 32, "lr": 3e-3},
                     "default": {}}


class Evaluator(nn.Module):
    def __init__(self, cfg: EvaluatorConfig, words: list, dims: int):
        super().__init__()
        self.cfg, self.words, self.stoi = cfg, words, {w: i for i, w in enumerate(words)}
        h = cfg.hidden
        self.movement = nn.Sequential(                                     # T2M MovementConvEncoder, time / 4
            nn.Conv1d(dims - 4, h, 4, 2, 1), nn.Dropout(0.2), nn.LeakyReLU(0.2),
            nn.Conv1d(h, h, 4, 2, 1), nn.Dropout(0.2), nn.LeakyReLU(0.2))
        self.movement_out = nn.Linear(h, h)
        self.motion_head = _Head(h, h, cfg.out_dim)
        self.word_emb = nn.Embedding(len(words), cfg.word_dim, padding_idx=0)
        self.pos_emb = nn.Linear(len(POS), cfg.word_dim)
        self.text_head = _Head(cfg.word_dim, h, cfg.out_dim)
        self.register_buffer("mean", torch.zeros(dims))
        self.register_buffer("std", torch.ones(dims))

    def embed_motion(self, feats, lengths):
        """Raw (de-normalised) features (B, T, D) -> (B, out_dim). Normalised here with the evaluator's
        own statistics, contacts dropped (as T2M). NOTE (deviation): zero padding of the raw features
        reads as -Mean/Std here (T2M pads the normalised motion with zeros); trained and used so."""
        x = ((feats - self.mean) / self.std)[..., :-4]
        h = self.movement_out(self.movement(x.transpose(1, 2)).transpose(1, 2))   # (B, T/4, hidden)
        return self.motion_head(h, (lengths // 4).clamp(min=1))

    def embed_text(self, token_lists):
        ids, pos, lengths = encode_tokens(token_lists, self.stoi)
        ids, pos = ids.to(self.mean.device), pos.to(self.mean.device)
        x = self.word_emb(ids) + self.pos_emb(F.one_hot(pos, len(POS)).float())
        return self.text_head(x, lengths)


def margin_loss(text, motion, captions, margin, rng=np.random):
    """T2M's contrastive loss: d(t_i, m_i)^2 for true pairs, and max(0, margin - d(t_i, m_j))^2 for one
    negative per text, the batch shifted by a random offset (pairs with the same caption are skipped)."""
    B = len(text)
    shift = int(rng.randint(1, B))
    j = (torch.arange(B) + shift) % B
    neg = F.relu(margin - (text - motion[j]).norm(dim=1)) ** 2
    differ = torch.tensor([captions[i] != captions[k] for i, k in enumerate(j.tolist())], device=text.device)
    return ((text - motion) ** 2).sum(1).mean() + (neg * differ).sum() / differ.sum().clamp(min=1)


def train_evaluator(cfg: EvaluatorConfig) -> Evaluator:
    common.seed_everything(cfg.seed)
    device = common.pick_device(cfg.device)
    train_set = data.MotionTextDataset(cfg.data, "train", seed=cfg.seed)
    if not 2 <= cfg.batch_size <= len(train_set):                        # margin_loss shifts negatives in a batch
        raise common.InputError(f"--batch-size {cfg.batch_size}: must be in 2..{len(train_set)}, the training items "
                              f"of {cfg.data}")
    data.MotionTextDataset(cfg.data, "val", deterministic=True)      # the val Real row at the end: read it now
    model = Evaluator(cfg, word_vocab(cfg.data), train_set.dims).to(device)
    model.mean.copy_(torch.tensor(train_set.mean)), model.std.copy_(torch.tensor(train_set.std))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps)
    common.print_config(cfg, "evaluator")
    part = cfg.out + ".part"                                  # an unfinished run's state, for --resume
    start, elapsed, data_rng = 0, 0.0, None
    if common.to_resume(part, cfg.resume):             # numpy's generator too: margin_loss draws from it
        ck = common.load_progress(part, "evaluator-state", cfg, device, model, opt)
        with common.entries(part):
            sched.load_state_dict(ck["sched"])
            start, elapsed, data_rng = ck["step"], ck["elapsed"], ck["data_rng"]
    t0 = time.time() - elapsed
    batches = data.train_batches(train_set, cfg.batch_size, cfg.seed, start, data_rng)
    bar = tqdm(range(start, cfg.steps), desc="evaluator", initial=start, total=cfg.steps, mininterval=2)
    for step in bar:
        batch = next(batches)
        feats = train_set.denormalize(batch["motion"].to(device)) * batch["mask"].to(device)[..., None]
        loss = margin_loss(model.embed_text(batch["tokens"]), model.embed_motion(feats, batch["lengths"].to(device)),
                           batch["captions"], cfg.margin)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 0.5)                  # T2M clips at 0.5
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        if (step + 1) % cfg.ckpt_every == 0 and step + 1 < cfg.steps:
            common.save_progress(part, "evaluator-state", cfg, device, step + 1, time.time() - t0, model, opt, train_set,
                                 sched=sched.state_dict())
    model.eval()
    real = evaluate_real(model, cfg.data, replications=3, seed=cfg.seed, device=device, split="val")
    common.atomic_save({"kind": "evaluator", "config": dataclasses.asdict(cfg), "words": model.words,
                      "dims": train_set.dims, "model": model.state_dict(), "train_time_s": time.time() - t0,
                      "real_val": real}, cfg.out)
    if os.path.isfile(part):
        os.remove(part)
    print(f"evaluator trained in {time.time() - t0:.0f}s -> {cfg.out}; val Real row: {format_row(real)}")
    return model


def load_evaluator(path: str, device="cpu") -> Evaluator:
    ck = common.load_checkpoint(path, "evaluator")
    with common.entries(path):                            # only the reading: a bug in the model is not the file's
        cfg, words, dims, state = EvaluatorConfig(**ck["config"]), list(ck["words"]), int(ck["dims"]), ck["model"]
    model = Evaluator(cfg, words, dims)
    common.load_state(model, state, path)
    return model.to(device).eval()


# -----------------------------------------------------------------------------
# The metrics, exactly as the T2M protocol computes them.


def euclidean(a, b):
    """(N, d), (M, d) -> (N, M) distances, sqrt(|a|^2 + |b|^2 - 2ab) clamped at 0 (T2M can give NaN)."""
    d2 = (a ** 2).sum(1)[:, None] + (b ** 2).sum(1)[None] - 2 * a @ b.T
    return np.sqrt(np.maximum(d2, 0))


def item_ranks(text, motion, rng, group=32):
    """Shuffle, split into groups of 32 (last partial group dropped), rank the 32 motions for each text.
    -> per item: how many motions of its group beat the true one (-1 if dropped), and the true-pair
    distance (NaN if dropped). A set smaller than 32 is one group, with a warning: its R-Precision is
    not the groups-of-32 protocol's (chance is 1/len, not 1/32)."""
    if len(text) < group:
        warnings.warn(f"R-Precision over {len(text)} items, fewer than a group of {group}: ranked in one group "
                      f"of {len(text)}, not comparable with groups of {group}")
    group = min(group, len(text))
    idx = rng.permutation(len(text))[: len(text) // group * group].reshape(-1, group)
    rank, dist = np.full(len(text), -1), np.full(len(text), np.nan)
    for g in idx:
        d = euclidean(text[g], motion[g])
        rank[g], dist[g] = (d < d.diagonal()[:, None]).sum(1), d.diagonal()
    return rank, dist


def r_precision(text, motion, rng, group=32, top_k=3):
    """-> (top-1..top_k hit rates, MM-Dist over the same pairs)."""
    rank, dist = item_ranks(text, motion, rng, group)
    kept = rank >= 0
    return np.array([(rank[kept] < k).mean() for k in range(1, top_k + 1)]), float(dist[kept].mean())


def fid(x, y, eps=1e-6):
    """Frechet distance between Gaussians fitted to two embedding sets (N, d), (M, d)."""
    if min(len(x), len(y)) < 2:                                # a covariance needs two motions
        raise common.InputError(f"FID: {len(x)} and {len(y)} motions; a split of fewer than 2 items has no covariance")
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1.dot(s2))
    if not np.isfinite(covmean).all():                                    # near-singular product: offset
        offset = np.eye(len(s1)) * eps
        covmean = scipy.linalg.sqrtm((s1 + offset).dot(s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: imaginary component {np.abs(covmean.imag).max():.4f} in sqrtm")
        covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def diversity(x, rng, times=300):
    """Mean distance between `times` random pairs (two independent draws without replacement);
    fewer pairs when the set is smaller than 300 (a small val split)."""
    times = min(times, len(x))
    a, b = rng.choice(len(x), times, replace=False), rng.choice(len(x), times, replace=False)
    return float(np.linalg.norm(x[a] - x[b], axis=1).mean())


def multimodality(x, rng, times=10):
    """x (captions, repeats, d): per caption, mean distance of `times` random pairs of its samples."""
    a = np.stack([rng.choice(x.shape[1], times, replace=False) for _ in range(len(x))])
    b = np.stack([rng.choice(x.shape[1], times, replace=False) for _ in range(len(x))])
    rows = np.arange(len(x))[:, None]
    return float(np.linalg.norm(x[rows, a] - x[rows, b], axis=-1).mean())


def confidence(values):
    """mean and the 95% half-width 1.96 * std / sqrt(n) (np.std, ddof = 0), as the papers report."""
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "ci": float(1.96 * v.std() / np.sqrt(len(v)))}


KEYS = ["R1", "R2", "R3", "FID", "MMDist", "Diversity"]


def format_row(row):
    cells = []
    for k in KEYS + ["MModality"]:
        if k in row:
            v = row[k]
            cells.append(f"{k} {v['mean']:.3f}±{v['ci']:.3f}" if isinstance(v, dict) else f"{k} {v:.3f}")
    return "  ".join(cells)


# -----------------------------------------------------------------------------
# The evaluation loop: replications over the test split.


@torch.no_grad()
def embed_split(evaluator, root, split, seed, device, batch_size=128, generators=(), gen_seed=0, steps=None,
                keep=False):
    """One pass over a split (random caption and crop per item, seeded): evaluator embeddings of the
    texts, the real motions, and, per generator, motions generated for the same captions and
    ground-truth lengths from the same noise (the whole split in one call, which denoises it in
    length-sorted chunks). -> text, real, [fake per generator]; keep: also (batch, real features,
    [fake features], embed), the features un-normalised (N, T, 263), for a second scorer, and embed:
    features (N, T, 263) -> evaluator embeddings, for other motions of the same items."""
    ds = data.MotionTextDataset(root, split, seed=seed)
    b = data.collate([ds[i] for i in range(len(ds))])
    lengths, mask = b["lengths"].to(device), b["mask"].to(device)[..., None]
    real = ds.denormalize(b["motion"].to(device)) * mask
    fakes = []
    for generator in generators:
        g = torch.Generator(device=device).manual_seed(gen_seed)
        x = generator.sample(b["captions"], lengths, steps=steps, generator=g)
        fakes.append((x * generator.std + generator.mean) * mask)
    chunks = lambda f: torch.cat([f(i) for i in range(0, len(ds), batch_size)]).cpu().numpy().astype(np.float64)  # noqa: E731
    text = chunks(lambda i: evaluator.embed_text(b["tokens"][i:i + batch_size]))
    emb = lambda m: chunks(lambda i: evaluator.embed_motion(m[i:i + batch_size], lengths[i:i + batch_size]))  # noqa: E731
    return (text, emb(real), [emb(f) for f in fakes]) + (((b, real, fakes, emb),) if keep else ())


def evaluate_real(evaluator, root, replications=20, seed=0, device="cpu", split="test"):
    """The 'Real' row: test motions against their own captions; FID between two independent draws."""
    rows = defaultdict(list)
    for r in range(replications):
        rng = np.random.default_rng(seed + r)
        text, real, _ = embed_split(evaluator, root, split, seed + r, device)
        _, ref, _ = embed_split(evaluator, root, split, seed + r + 10_000, device)
        (r1, r2, r3), mm = r_precision(text, real, rng)
        for k, v in zip(KEYS, [r1, r2, r3, fid(real, ref), mm, diversity(real, rng)]):
            rows[k].append(v)
    return {k: confidence(v) for k, v in rows.items()}


def evaluate(generator, evaluator, root, replications=20, seed=0, device="cpu", mm=False, steps=None, split="test",
             part=None):
    """Table-1 row of a generator: R-Precision, FID, MM-Dist, Diversity (and MultiModality), each
    mean +/- 95% CI over replications; every replication re-draws captions, crops and noise.
    part (path, settings): keep each finished replication's values there; a file already there (the caller
    removes it unless resuming) must hold these settings, and its replications are not run again. Each
    replication is seeded on its own (seed + r), so a resumed evaluation ends with the numbers of one never
    stopped."""
    rows = defaultdict(list)
    if part and os.path.isfile(part[0]):
        rows.update({k: v[:replications] for k, v in load_part(*part, device).items()})
    start = len(rows["R1"])
    for r in tqdm(range(start, replications), desc="evaluate", mininterval=2, initial=start, total=replications):
        rng = np.random.default_rng(seed + r)
        text, real, (fake,) = embed_split(evaluator, root, split, seed + r, device, generators=[generator],
                                          gen_seed=seed * 1000 + r, steps=steps)
        (r1, r2, r3), mmd = r_precision(text, fake, rng)
        for k, v in zip(KEYS, [r1, r2, r3, fid(fake, real), mmd, diversity(fake, rng)]):
            rows[k].append(float(v))
        if mm:
            rows["MModality"].append(float(multimodality_of(generator, evaluator, root, rng, device, split, steps)))
        if part:
            common.atomic_write(part[0], json.dumps({"settings": part[1], "device_type": torch.device(device).type,
                                                     "rows": rows}))
    return {k: confidence(v) for k, v in rows.items()}


def load_part(path, settings, device):
    """The replications an evaluation stopped after, if it ran with these settings (else a CheckpointError)."""
    try:
        with open(path) as f:
            saved = json.load(f)
        rows = {k: [float(x) for x in v] for k, v in saved["rows"].items()}
        settings_saved, device_saved = dict(saved["settings"]), str(saved["device_type"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise common.CheckpointError(f"{path}: not an unfinished evaluation's file ({type(e).__name__}); "
                                     "delete it, or drop --resume") from None
    common.check_resumable(settings_saved, device_saved, settings, path, torch.device(device), may_change=())
    print(f"resumed {path} after {len(rows['R1'])} replication(s)")
    return rows


@torch.no_grad()
def multimodality_of(generator, evaluator, root, rng, device, split="test", steps=None, captions=100, repeats=30):
    ds = data.MotionTextDataset(root, split, seed=int(rng.integers(1 << 30)))
    picks = rng.choice(len(ds), min(captions, len(ds)), replace=False)
    g = torch.Generator(device=device).manual_seed(int(rng.integers(1 << 30)))
    out = []
    for i in picks:
        item = ds[int(i)]
        lengths = torch.full((repeats,), item["length"], device=device)
        x = generator.sample([item["caption"]] * repeats, lengths, steps=steps, generator=g)
        out.append(evaluator.embed_motion(x * generator.std + generator.mean, lengths).cpu().numpy())
    return multimodality(np.stack(out), rng)


def source_motion(name: str) -> str:
    """'M000041[20:80]' -> '000041': a clip, its left-right mirror and its captioned pieces share a source."""
    return name.split("[")[0].removeprefix("M")


def cluster_resample(columns, clusters, draws=2000, seed=0):
    """columns (N, C) per-item sums, clusters (N,) labels -> (draws, C): the column totals over `draws`
    resamplings of whole clusters with replacement (the bootstrap for items that come in groups)."""
    _, inv = np.unique(clusters, return_inverse=True)
    per_cluster = np.stack([np.bincount(inv, c) for c in np.asarray(columns, dtype=np.float64).T], 1)
    pick = np.random.default_rng(seed).integers(len(per_cluster), size=(draws, len(per_cluster)))
    return per_cluster[pick].sum(1)


def compare(gen_a, gen_b, evaluator, root, replications=3, seed=0, device="cpu", split="test", draws=2000,
            second=None):
    """Is b better than a on this split, and how sure is that? A paired comparison: in replication r both
    generators get the captions, crops, R-Precision groups and initial noise of evaluate()'s replication
    r (so each generator's R1 and MM-Dist equal evaluate()'s means), and every item keeps its hits and
    true-pair distances. The 95% interval of the relative change comes from resampling source motions
    (cluster_resample): the uncertainty from *which* clips the split holds, which evaluate()'s
    interval over replications, drawn on one fixed set of clips, leaves out.
    Also counted, item by item (point values): "fixed" (a's miss that b retrieves) and "broken" (a's hit
    that b misses); and, with second(captions, feats (N, T, 263), lengths) -> (text, motion) embeddings of
    another retrieval model (e.g. the reward), ranked by Euclidean distance in the same groups: of the
    "gap" items, where the evaluator retrieves the real motion but not a's sample, how many the second
    model retrieves a's sample for (what the second model cannot see is wrong)."""
    names = [n for n, _, _ in data.MotionTextDataset(root, split).items]
    cols = np.zeros((len(names), 5))                                      # hits a, hits b, dist a, dist b, kept
    counts = defaultdict(int)
    for r in tqdm(range(replications), desc="compare", mininterval=2):
        text, real, fakes, (b, real_feats, fake_feats, _) = embed_split(
            evaluator, root, split, seed + r, device, generators=(gen_a, gen_b), gen_seed=seed * 1000 + r, keep=True)
        hit = []
        for j, fake in enumerate(fakes):
            rank, dist = item_ranks(text, fake, np.random.default_rng(seed + r))  # the same groups for a and b
            kept = rank >= 0
            cols[kept, j] += rank[kept] == 0
            cols[kept, 2 + j] += dist[kept]
            hit.append(rank == 0)
        cols[kept, 4] += 1
        counts["kept"] += int(kept.sum())
        counts["fixed"] += int((~hit[0] & hit[1]).sum())                 # a dropped item (rank -1) hits neither
        counts["broken"] += int((hit[0] & ~hit[1]).sum())
        if second is not None:
            gap = (item_ranks(text, real, np.random.default_rng(seed + r))[0] == 0) & ~hit[0]
            t2, m2 = second(b["captions"], fake_feats[0], b["lengths"].to(device))
            counts["gap"] += int(gap.sum())
            counts["gap, second retrieves a"] += int((gap & (item_ranks(t2, m2, np.random.default_rng(seed + r))[0] == 0)).sum())
    clusters = [source_motion(n) for n in names]
    stats = lambda t: {"R1_a": t[..., 0] / t[..., 4], "R1_b": t[..., 1] / t[..., 4],  # noqa: E731
                       "R1_diff": (t[..., 1] - t[..., 0]) / t[..., 4],
                       "R1_change": t[..., 1] / t[..., 0] - 1, "MMDist_change": t[..., 3] / t[..., 2] - 1}
    with np.errstate(invalid="ignore", divide="ignore"):                   # a draw with no hits for a: inf / NaN
        point, boot = stats(cols.sum(0)), stats(cluster_resample(cols, clusters, draws, seed))
        out = {k: {"value": float(point[k]), "lo": float(np.percentile(boot[k], 2.5)),
                   "hi": float(np.percentile(boot[k], 97.5))} for k in point}
    return out | \
        {"items": len(names), "sources": len(set(clusters)), "replications": replications, "counts": dict(counts)}


def pct(v):
    return f"{100 * v:+.1f}%"


def interval(r, f):
    return f"{f(r['value'])} [{f(r['lo'])}, {f(r['hi'])}]"


def r1_change(res):
    """compare()'s top-1 line: the relative change with its interval; where some resamples hold none of a's
    hits (small splits, weak a) that interval is undefined, so the absolute difference's is given instead."""
    rel = res["R1_change"]
    if np.isfinite([rel["value"], rel["lo"], rel["hi"]]).all():
        return interval(rel, pct)
    return (f"{pct(rel['value'])} (no interval of the relative change: some resamples hold none of a's hits); "
            f"difference {interval(res['R1_diff'], lambda v: f'{v:+.3f}')}")


# -----------------------------------------------------------------------------
# Memory and time meters.


class _Saved:
    """What autograd stores instead of a saved tensor while a SavedTensorMeter is active; when the graph
    holding it is freed, the finalizer tells the meter."""
    __slots__ = ("t", "__weakref__")

    def __init__(self, t, meter, key):
        self.t = t
        weakref.finalize(self, meter._release, key)


class SavedTensorMeter:
    """Peak bytes of tensors that autograd keeps for backward, live at the same time.

    Through torch.autograd.graph.saved_tensors_hooks: every saved tensor is counted by its storage
    (views and a tensor saved twice count once), parameters of the given modules are excluded (they
    are model memory, not graph memory), and a storage stops counting when the last graph holding it
    is freed. It does not depend on the device, the allocator or timing, so it is the quantity the
    O(1)-versus-O(T) comparisons use; cuda_peak_mib() gives the allocator's view on a GPU."""

    def __init__(self, *modules):
        self.exclude = {p.untyped_storage().data_ptr() for m in modules for p in m.parameters()}
        self.live, self.current, self.peak = {}, 0, 0

    def _pack(self, t):
        s = t.untyped_storage()
        key = s.data_ptr()
        if key in self.exclude or s.nbytes() == 0:
            return t
        entry = self.live.setdefault(key, [s.nbytes(), 0])
        if entry[1] == 0:
            self.current += entry[0]
            self.peak = max(self.peak, self.current)
        entry[1] += 1
        return _Saved(t, self, key)

    def _release(self, key):
        entry = self.live[key]
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self.live[key]

    @staticmethod
    def _unpack(h):
        return h.t if isinstance(h, _Saved) else h

    def __enter__(self):
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)

    @property
    def peak_mib(self):
        return self.peak / 2 ** 20


def cuda_peak_mib(fn):
    """Run fn() and return (its result, torch.cuda.max_memory_allocated in MiB) -- None off a GPU."""
    if not torch.cuda.is_available():
        return fn(), None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    return out, torch.cuda.max_memory_allocated() / 2 ** 20


# -----------------------------------------------------------------------------


def scored(sub, name, help, generators=1, replications=3):
    """A subcommand that scores generators with an evaluator (eval, compare; diagnostics.py's probe): its flags."""
    s = sub.add_parser(name, help=help)
    s.add_argument("--generator", required=True, **({"nargs": 2, "metavar": ("A", "B")} if generators == 2 else {}))
    s.add_argument("--split", default="test", choices=("test", "val"),
                   help="val: for choices made with a second evaluator (never the test split)")
    s.add_argument("--evaluator", required=True)
    s.add_argument("--data", required=True)
    s.add_argument("--replications", type=int, default=replications,
                   help=f"repeats of the whole evaluation, ± over them (default {replications})")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto")
    return s


def loaded(a, device):
    """The generators and the evaluator of a scored subcommand, each checked against --data -> (gens, ev)."""
    import models
    paths = a.generator if isinstance(a.generator, list) else [a.generator]
    gens, ev = [models.load_generator(g, device) for g in paths], load_evaluator(a.evaluator, device)
    for path, gen in zip(paths, gens):
        data.check_scored(a.data, a.split, path, gen.mean, gen.vocab.itos)
    data.check_scored(a.data, a.split, a.evaluator, ev.mean, ev.words, lemmas=True)
    return gens, ev


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train-evaluator", help="train the T2M-style evaluator on the train split")
    common.add_config_args(t, EvaluatorConfig)
    e = scored(sub, "eval", "the Table-1 row of a generator on the test split (or --split val); 20 replications "
               "by default, T2M's protocol (the README's tables use 3 or 5)", replications=20)
    e.add_argument("--mm", action="store_true", help="also MultiModality (100 captions x 30 samples)")
    e.add_argument("--json", help="also write the rows and the machine here; finished replications are kept in "
                   "JSON.part until the end")
    e.add_argument("--resume", action="store_true", help="go on from JSON.part (a stopped eval's replications)")
    c = scored(sub, "compare", "b vs a, item by item, with an interval over the split's source motions", generators=2)
    c.add_argument("--reward", default=None, help="also: where a's misses are that this reward (spl.py) cannot see")
    argv = sys.argv[1:]
    a = p.parse_args(argv)
    rules = {"replications": ">= 1", "steps": ">= 1",
             "seed": common.SEED, "lr": "> 0", "margin": "> 0", "hidden": ">= 1", "word_dim": ">= 1", "out_dim": ">= 1",
             "ckpt_every": ">= 1"}
    common.check_ranges(a, **{k: rule for k, rule in rules.items() if hasattr(a, k)})  # before any work
    if getattr(a, "json", None):
        common.output_path(a.json, "--json", (".json",))
    if a.cmd == "train-evaluator":
        cfg = common.config_from_args(EvaluatorConfig, a)
        if cfg.preset not in EVALUATOR_PRESETS:
            raise common.InputError(f"--preset {cfg.preset!r}: tiny or default")
        given = common.given_flags(t, argv[1:])                            # a flag given wins, even at its default
        cfg = common.fill(cfg, EVALUATOR_PRESETS[cfg.preset], given)
        common.output_path(cfg.out, "--out", kind="evaluator")
        train_evaluator(cfg)
    elif a.cmd == "eval":
        if a.resume and not a.json:
            raise common.InputError("--resume needs --json: a stopped eval's replications are kept in JSON.part")
        device = common.pick_device(a.device)
        (gen,), ev = loaded(a, device)
        part = None
        if a.json:                                 # what the saved replications must have been computed with
            part = (f"{a.json}.part", {"generator": common.identity(a.generator),
                                       "evaluator": common.identity(a.evaluator), "data": os.path.abspath(a.data),
                                       "split": a.split, "seed": a.seed, "mm": a.mm,
                                       "machine": common.digits_key(device)})
            if not common.to_resume(part[0], a.resume) and os.path.isfile(part[0]):
                os.remove(part[0])                                         # an old stopped eval's: not resumed
        t0 = time.time()
        rows = {"real": evaluate_real(ev, a.data, a.replications, a.seed, device, split=a.split),
                "generator": evaluate(gen, ev, a.data, a.replications, a.seed, device, mm=a.mm, split=a.split,
                                      part=part)}
        for name, row in rows.items():
            print(f"{name:>10}: {format_row(row)}")
        print(f"({a.split} split, {a.replications} replications, {time.time() - t0:.0f}s)")
        if a.json:                                          # the machine: another CPU or GPU rounds otherwise
            common.atomic_write(a.json, json.dumps({**rows, "machine": common.machine(device)}, indent=1))
            os.remove(part[0])
    elif a.cmd == "compare":
        device = common.pick_device(a.device)
        gens, ev = loaded(a, device)
        second = None
        if a.reward:
            import spl
            reward = spl.load_reward(a.reward, device)
            data.check_scored(a.data, a.split, a.reward, reward.mean, reward.vocab.itos)
            second = reward.retrieval_embeddings
        res = compare(*gens, ev, a.data, a.replications, a.seed, device, a.split, second=second)
        print(f"{a.split} split, {res['items']} items from {res['sources']} source motions, "
              f"{res['replications']} paired replications")
        print(f"  R-P top1  a {res['R1_a']['value']:.3f}   b {res['R1_b']['value']:.3f}   b vs a {r1_change(res)}")
        print(f"  MM-Dist   b vs a {interval(res['MMDist_change'], pct)}   (95% intervals: source motions resampled)")
        n = res["counts"]
        print(f"  items (summed over replications): b retrieves {n['fixed']} of a's misses and misses {n['broken']}"
              f" of a's hits")
        if a.reward:
            print(f"  of the {n['gap']} items where the evaluator retrieves the real motion but not a's sample, the"
                  f" reward retrieves a's sample in {n['gap, second retrieves a']}"
                  f" ({100 * n['gap, second retrieves a'] / max(n['gap'], 1):.0f}%)")


if __name__ == "__main__":
    common.cli(main)
