r"""
spl.py -- the reward R_phi: a noise-aware text-motion retrieval model (paper Sec. 4.2, Eq. 11-12)
refined by Self-refining Preference Learning (Eq. 13-17, Algorithm 2, App. B.4).

Reward (Eq. 11)   R_phi(x, t, c) = tau * cos(E_M(x, t), E_T(c)): TMR-style transformers, one over
                  4-frame patches of normalised motion features with a [CLS] token and a noise-level
                  token, one over caption words (models.TextEncoder, its own weights); tau is learned
                  (initialised at 10, i.e. temperature 0.1, clamped to [1, 100] like CLIP's logit scale).
Pretraining       symmetric InfoNCE on R_phi, captions that say the same thing (same content words)
                  masked out as negatives, and noise-aware: each motion is, with probability 1/2,
                  replaced by x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, t ~ U[0, 500] of
                  MDM's cosine schedule.
Noise space       The noise is added to the *normalised 263-d features*, and the noise-level token
                  embeds log(alpha_bar / (1 - alpha_bar)), not an integer t, so the reward reads any
                  schedule: MDM's x_t (feature space) is exactly what it was trained on. MLD's x_t is a
                  noisy *latent*; decoding it does not give feature-space noise, so for MLD the
                  noise-aware R_phi(decode(x_{t-1}), t-1, c) reads the reward off its training
                  distribution. It still won on val and is easytune.py's default; the one-step
                  prediction R_phi(decode(x0_hat), 0, c) (the official EasyTune code's) is
                  `--reward-input x0` there.
SPL (Alg. 2)      per batch, the batch is the retrieval pool: every caption scores every motion
                  (Eq. 11); if its ground truth is not in the top-k (k = 3 here, the paper's K = 10)
                  the pair (x_w = ground truth, x_l = best-scoring wrong motion) is mined (Eq. 13-14),
                  P = softmax(R(x_w), R(x_l)) (Eq. 15), Q = (1, 0) (Eq. 16), loss KL(Q || P) (Eq. 17);
                  rows where retrieval succeeds (the paper's Q = (0.5, 0.5) with x_l = x_w, KL = 0)
                  keep the contrastive objective instead (App. B.4).
                  The failure ratio is logged per epoch (the paper aims at about 1:20).
Ensemble          RewardEnsemble: the mean R_phi of rewards made by this recipe from other seeds (not in
                  the paper; easytune.py --reward-model a.pt,b.pt,c.pt).

Notation (code -> paper): R -> R_phi, tau -> tau, E_M / E_T -> motion_embed / text_embed,
x_w / x_l -> winner / loser, P, Q -> P, Q, k -> k (top-k), alpha_bar -> \bar{alpha}_t.

NOTE (deviations): no VAE branch, decoder or reconstruction loss (TMR has them; only the contrastive
embedding is used as a reward); the official code mixes SPL at weight 1e-2 into the full contrastive
loss with a doubled temperature -- this follows the paper's per-row switch; "near-duplicate" captions
are found by their content words, not by a sentence-embedding model (no download). Eq. 13-14 take a
plain top-k; mining here skips motions whose caption means the same as the query (neither counted
above the truth nor chosen as x_l), as the official code masks them in its contrastive loss.

Run:  python spl.py pretrain --data data/synth --out runs/synth/reward_pre.pt    # [--resume]: from <out>.part
      python spl.py spl --init runs/synth/reward_pre.pt --out runs/synth/reward.pt
      python spl.py bench --reward runs/synth/reward_pre.pt runs/synth/reward.pt --data data/synth
      python spl.py bench --reward runs/synth/reward.pt --data data/synth --samples runs/synth/mld.pt \
          runs/synth/easytune_mld/best.pt     # how retrievable the reward finds each model's samples
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import common
import data
import models


@dataclass
class RewardConfig:
    data: str = "data/synth"
    out: str = "runs/synth/reward.pt"
    init: str = ""                  # spl: the pretrained reward to refine
    preset: str = "default"         # tiny | default
    d_model: int = 128
    heads: int = 4
    layers: int = 3                 # motion encoder (TMR: 6)
    text_layers: int = 2
    embed_dim: int = 128
    patch: int = 4
    tau: float = 10.0               # initial R scale = 1 / InfoNCE temperature 0.1
    p_noise: float = 0.5            # fraction of motions replaced by x_t
    max_t: int = 500                # t ~ U[0, max_t] of the cosine schedule (official EasyTune: [0, 500])
    steps: int = 1500               # pretraining steps (spl: steps of preference fine-tuning)
    batch_size: int = 64            # also the retrieval pool of SPL (256 there)
    lr: float = 5e-4                # official: 1e-4 pretrain, 1e-5 SPL (far longer schedules)
    spl_k: int = 3                  # paper: K = 10 in pools of 32 (App. A.6; released code: batches of 64);
                                    # 3 in pools of 256 here gives the ~1:20 failure ratio the paper aims at
    spl_weight: float = 1.0         # 0 gives the control run: the same steps, contrastive on every row
    seed: int = 7
    device: str = "auto"
    ckpt_every: int = 100           # the run's state to <out>.part, for --resume
    resume: bool = False            # continue from <out>.part, exactly as if not stopped


PRESETS = {"tiny": {"d_model": 32, "heads": 2, "layers": 1, "text_layers": 1, "embed_dim": 32, "steps": 60,
                    "batch_size": 32, "lr": 2e-3},
           "default": {}}
SPL_DEFAULTS = {"steps": 150, "lr": 1e-4, "batch_size": 256}   # `spl` defaults (pool of 256 motions)
STOP = set("a an the person someone somebody man woman human figure he she they his her their is and then".split())


class Reward(nn.Module):
    """R_phi(x, t, c): normalised features (B, T, D) + lengths + noise level + captions -> (B,) or (B, B)."""

    def __init__(self, cfg: RewardConfig, vocab: data.Vocab, dims: int):
        super().__init__()
        self.cfg, self.vocab = cfg, vocab
        d = cfg.d_model
        self.x_in = nn.Linear(cfg.patch * dims, d)
        self.cls = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.noise_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.register_buffer("pos", models.timestep_embedding(torch.arange(2 + data.MAX_LEN // cfg.patch), d)[None])
        self.motion = models.Transformer(d, cfg.layers, cfg.heads, 2 * d, 0.0)
        self.motion_out = nn.Linear(d, cfg.embed_dim)
        self.text = models.TextEncoder(len(vocab), d, cfg.text_layers, cfg.heads, 0.0, 24)
        self.text_out = nn.Linear(d, cfg.embed_dim)
        self.log_tau = nn.Parameter(torch.tensor(math.log(cfg.tau)))
        self.register_buffer("mean", torch.zeros(dims))
        self.register_buffer("std", torch.ones(dims))

    @property
    def tau(self):
        return self.log_tau.clamp(0.0, math.log(100.0)).exp()

    def motion_embed(self, x, lengths, alpha_bar=None):
        """E_M(x, t): (B, T, D) normalised features, lengths (B,), alpha_bar (B,) or None (clean)
        -> unit vectors (B, embed_dim)."""
        B, P = len(x), self.cfg.patch
        ab = torch.ones(B, device=x.device) if alpha_bar is None else torch.as_tensor(alpha_bar, device=x.device).expand(B)
        log_snr = torch.log(ab / (1 - ab).clamp(min=1e-8)).clamp(-10, 10)    # clean -> 10
        noise_tok = self.noise_mlp(models.timestep_embedding((10 - log_snr) * 50, self.cfg.d_model))[:, None]
        h = self.x_in(models.patchify(x, P))                                   # (B, T/P, d)
        h = torch.cat([self.cls.expand(B, 1, -1), noise_tok, h], 1) + self.pos[:, :2 + h.shape[1]]
        frames = torch.arange(x.shape[1] // P, device=x.device)[None] * P
        pad = torch.cat([torch.zeros(B, 2, dtype=torch.bool, device=x.device), frames >= lengths[:, None].to(x.device)], 1)
        return F.normalize(self.motion_out(self.motion(h, pad)[:, 0]), dim=-1)

    def text_embed(self, captions):
        ids, pad = self.vocab.batch(captions)
        return F.normalize(self.text_out(self.text(ids.to(self.mean.device), pad.to(self.mean.device))[:, 0]), dim=-1)

    def forward(self, x, lengths, captions, alpha_bar=None):
        """Eq. 11, paired: R_phi(x_i, t_i, c_i) for each i -> (B,)."""
        return self.tau * (self.motion_embed(x, lengths, alpha_bar) * self.text_embed(captions)).sum(-1)

    def log_prob(self, x, lengths, captions, bank, alpha_bar=None):
        """The contrastive form used for fine-tuning: log p(c | x) among {c} and a bank of training
        captions, tau cos(x, c) - logsumexp_{c'} tau cos(x, c'). It saturates once x is retrieved by
        its caption, so gradient ascent cannot buy reward with more of a correlated cue. Bank captions
        of the same meaning as c (the caption itself included) are not competitors and are left out,
        as in pretraining's InfoNCE. bank: (captions, embeddings (n, embed_dim)). -> (B,)"""
        bank_captions, bank_emb = bank
        m = self.motion_embed(x, lengths, alpha_bar)
        pos = self.tau * (m * self.text_embed(captions)).sum(-1)
        same = same_meaning(captions, bank_captions)                                   # (B, n)
        others = (self.tau * m @ bank_emb.T).masked_fill(same.to(m.device), float("-inf"))
        return pos - torch.logsumexp(torch.cat([pos[:, None], others], 1), 1)

    @torch.no_grad()
    def caption_bank(self, root, n=512, seed=0):
        """n distinct captions of the *training* split and their embeddings (n, embed_dim)."""
        caps = sorted({c for name in data.read_split(root, "train") for c, _, _, _ in data.load_captions(root, name)})
        pick = [caps[i] for i in np.random.default_rng(seed).choice(len(caps), min(n, len(caps)), replace=False)]
        return pick, self.text_embed(pick)

    def normalise(self, feats):
        """Un-normalised features (..., 263) -> the reward's input normalisation (its training Mean/Std)."""
        return (feats - self.mean) / self.std

    @torch.no_grad()
    def retrieval_embeddings(self, captions, feats, lengths, batch_size=128):
        """(text, motion) unit embeddings as numpy (N, embed_dim) of captions and *un-normalised*
        features (N, T, 263): the reward as a retrieval model beside the evaluator (metrics.compare)."""
        mask = (torch.arange(feats.shape[1], device=feats.device)[None] < lengths[:, None])[..., None]
        x = self.normalise(feats) * mask
        motion = torch.cat([self.motion_embed(x[i:i + batch_size], lengths[i:i + batch_size])
                            for i in range(0, len(x), batch_size)])
        return self.text_embed(list(captions)).cpu().double().numpy(), motion.cpu().double().numpy()

    def scores(self, x, lengths, captions, alpha_bar=None):
        """Eq. 11 for every (caption i, motion j) -> (B, B)."""
        return self.tau * self.text_embed(captions) @ self.motion_embed(x, lengths, alpha_bar).T


def meaning(caption):
    """A caption's content words (ignoring subjects, articles, 'then'): equal bags, same meaning."""
    return frozenset(data.words(caption)) - STOP


def same_meaning(captions, others=None):
    """(B, B) bool: captions with the same content words; against `others` (B, n)."""
    bags = [meaning(c) for c in captions]
    other_bags = bags if others is None else [meaning(c) for c in others]
    return torch.tensor([[a == b for b in other_bags] for a in bags])


def noisy(x, mask, max_t, p, scheduler):
    """Replace each motion, with probability p, by a forward-process sample x_t (normalised feature
    space, cosine schedule); -> (x or x_t, alpha_bar per item, 1.0 for the clean ones)."""
    B = len(x)
    t = torch.randint(0, max_t + 1, (B,), device=x.device)
    ab = scheduler.alpha_bar.to(x.device)[t]
    use = torch.rand(B, device=x.device) < p
    x_t = scheduler.add_noise(x, torch.randn_like(x), t) * mask[..., None]
    return torch.where(use[:, None, None], x_t, x), torch.where(use, ab, torch.ones_like(ab))


def info_nce_rows(S, dup):
    """Symmetric InfoNCE with duplicates masked as negatives, per row: (B,)."""
    eye = torch.eye(len(S), dtype=torch.bool, device=S.device)
    S = S.masked_fill(dup.to(S.device) & ~eye, float("-inf"))
    target = torch.arange(len(S), device=S.device)
    return 0.5 * (F.cross_entropy(S, target, reduction="none") + F.cross_entropy(S.T, target, reduction="none"))


def mine_pairs(S, dup, k):
    """Eq. 13-14 on a score matrix S (captions x motions, ground truth on the diagonal).
    -> (failed (B,) bool: ground truth outside the top-k, loser (B,) index of the best wrong motion).
    NOTE (deviation): motions whose caption means the same as the query are not 'wrong' and are skipped
    (Eq. 13-14 rank every other motion)."""
    eye = torch.eye(len(S), dtype=torch.bool, device=S.device)
    other = S.masked_fill(dup.to(S.device) | eye, float("-inf"))
    loser = other.argmax(1)
    rank = (other > S.diagonal()[:, None]).sum(1)                              # wrong motions above the truth
    return rank >= k, loser


def spl_loss(r_w, r_l, failed):
    """Eq. 15-17: KL(Q || P) with P = softmax(R(x_w), R(x_l)), Q = (1, 0) for mined pairs and
    (0.5, 0.5) otherwise. -> (B,). The paper sets x_l = x_w on rows that retrieve correctly, so P = Q
    and the loss is 0 there; train() passes the best wrong motion on every row and keeps this loss
    only where `failed` (the contrastive term elsewhere), which is the same."""
    logp = torch.log_softmax(torch.stack([r_w, r_l], -1), -1)
    q = torch.where(failed[:, None], torch.tensor([1.0, 0.0], device=r_w.device), torch.tensor([0.5, 0.5], device=r_w.device))
    return (q * (torch.log(q.clamp(min=1e-12)) - logp)).sum(-1)               # 0 log 0 = 0


def build(cfg: RewardConfig, device):
    vocab = data.build_vocab(cfg.data)
    train_set = data.MotionTextDataset(cfg.data, "train", seed=cfg.seed)
    model = Reward(cfg, vocab, train_set.dims).to(device)
    model.mean.copy_(torch.tensor(train_set.mean)), model.std.copy_(torch.tensor(train_set.std))
    return model, train_set


def train(cfg: RewardConfig, mode: str) -> Reward:
    """mode 'pretrain': contrastive, noise-aware. mode 'spl': Algorithm 2 from cfg.init."""
    common.seed_everything(cfg.seed)
    device = common.pick_device(cfg.device)
    if mode == "spl":
        model = load_reward(cfg.init, device).train()
        data.check_same_dataset(cfg.data, f"--init {cfg.init}", model.mean, model.vocab.itos,
                                data.build_vocab(cfg.data).itos)
        train_set = data.MotionTextDataset(cfg.data, "train", seed=cfg.seed)
        arch = ("d_model", "heads", "layers", "text_layers", "embed_dim", "patch", "tau")   # the init's, kept
        model.cfg = dataclasses.replace(cfg, **{k: getattr(model.cfg, k) for k in arch})  # saved: what this run did
    else:
        model, train_set = build(cfg, device)
    if not 2 <= cfg.batch_size <= len(train_set):
        raise common.InputError(f"--batch-size {cfg.batch_size}: must be in 2..{len(train_set)}, the training "
                              f"items of {cfg.data}")
    sched = models.DDIMScheduler("cosine", "sample")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    common.print_config(model.cfg, f"reward {mode}")
    part = cfg.out + ".part"                                  # an unfinished run's state, for --resume
    start, elapsed, log, epoch_stats, data_rng = 0, 0.0, [], defaultdict(float), None
    if common.to_resume(part, cfg.resume):
        ck = common.load_progress(part, "reward-state", cfg, device, model, opt)
        with common.entries(part):
            start, elapsed, log, data_rng = ck["step"], ck["elapsed"], ck["log"], ck["data_rng"]
            epoch_stats.update(ck["epoch_stats"])

    def end_epoch(step):                                  # one log row per pass over the data (and the last part)
        if epoch_stats["rows"]:
            log.append({"step": step, "failure_ratio": epoch_stats["failed"] / epoch_stats["rows"],
                        "loss": epoch_stats["loss"] / epoch_stats["batches"]})
            if mode == "spl":
                tqdm.write(f"{mode} epoch {len(log)}: retrieval failures {epoch_stats['failed']:.0f}/"
                           f"{epoch_stats['rows']:.0f} (1:{epoch_stats['rows'] / max(epoch_stats['failed'], 1):.0f})")
        epoch_stats.clear()

    t0, per_epoch = time.time() - elapsed, len(train_set) // cfg.batch_size
    batches = data.train_batches(train_set, cfg.batch_size, cfg.seed, start, data_rng)
    bar = tqdm(range(start, cfg.steps), desc=f"reward {mode}", initial=start, total=cfg.steps, mininterval=2)
    for step in bar:
        if step % per_epoch == 0:
            end_epoch(step)
        batch = next(batches)
        x, mask = batch["motion"].to(device), batch["mask"].to(device)
        x, ab = noisy(x, mask, cfg.max_t, cfg.p_noise, sched)
        S = model.scores(x, batch["lengths"].to(device), batch["captions"], ab)     # (B, B) Eq. 11
        dup = same_meaning(batch["captions"])
        contrast = info_nce_rows(S, dup)
        with torch.no_grad():
            failed, loser = mine_pairs(S, dup, cfg.spl_k)                         # Algorithm 2, step 1: mining
        if mode == "spl":
            rows = torch.arange(len(S), device=device)
            pref = spl_loss(S[rows, rows], S[rows, loser], failed)                # step 2: Eq. 15-17
            loss = torch.where(failed, cfg.spl_weight * pref, contrast).mean() if cfg.spl_weight else contrast.mean()
        else:
            loss = contrast.mean()                                                # (failures only logged)
        for k, v in (("failed", failed.sum().item()), ("rows", len(S)), ("loss", loss.item()), ("batches", 1)):
            epoch_stats[k] += v
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", tau=f"{model.tau.item():.1f}", refresh=False)
        if (step + 1) % cfg.ckpt_every == 0 and step + 1 < cfg.steps:
            common.save_progress(part, "reward-state", cfg, device, step + 1, time.time() - t0, model, opt, train_set,
                                 log=log, epoch_stats=dict(epoch_stats))
    end_epoch(cfg.steps)
    model.eval()
    common.atomic_save({"kind": "reward", "config": dataclasses.asdict(model.cfg), "vocab": model.vocab.itos,
                      "dims": int(model.mean.shape[0]), "model": model.state_dict(), "mode": mode, "log": log,
                      "train_time_s": time.time() - t0}, cfg.out)
    if os.path.isfile(part):
        os.remove(part)
    print(f"reward {mode} done in {time.time() - t0:.0f}s -> {cfg.out}")
    return model


def load_reward(path: str, device="cpu") -> Reward:
    ck = common.load_checkpoint(path, "reward")
    with common.entries(path):                            # only the reading: a bug in the model is not the file's
        cfg, vocab, dims, state = RewardConfig(**ck["config"]), data.Vocab(ck["vocab"]), int(ck["dims"]), ck["model"]
    model = Reward(cfg, vocab, dims)
    common.load_state(model, state, path)
    return model.to(device).eval()


class RewardEnsemble(nn.Module):
    """R_phi = mean_k R_phi_k over rewards made by the same recipe from other seeds (not in the paper).
    Fine-tuning against one retrieval model finds changes that model likes and another of the same
    design need not (README, "A second evaluator as the reward"); the mean rewards only what the members
    agree on. It stands in for a Reward where easytune.py needs one: forward (Eq. 11, averaged), and,
    for the selection guard's reward-embedding FID, the first member's normalise and motion_embed."""

    def __init__(self, members: list):
        super().__init__()
        first = members[0]
        for m in members[1:]:
            if m.vocab.itos != first.vocab.itos or not (torch.equal(m.mean, first.mean) and torch.equal(m.std, first.std)):
                raise common.InputError("--reward-model: the rewards of an ensemble must be trained on one dataset")
        self.members, self.vocab = nn.ModuleList(members), first.vocab

    def forward(self, x, lengths, captions, alpha_bar=None):
        return torch.stack([m(x, lengths, captions, alpha_bar) for m in self.members]).mean(0)   # (B,)

    def normalise(self, feats):
        return self.members[0].normalise(feats)

    def motion_embed(self, x, lengths, alpha_bar=None):
        return self.members[0].motion_embed(x, lengths, alpha_bar)


# -----------------------------------------------------------------------------
# The retrieval benchmark (the paper's Tables 4, S5, S8).


def recall_at(S, ks=(1, 2, 3, 5, 10)):
    """S (N, N) scores, truth on the diagonal -> {R@k} in percent, ranking rows."""
    rank = (S > S.diagonal()[:, None]).sum(1)
    return {f"R@{k}": float((rank < k).float().mean() * 100) for k in ks}


@torch.no_grad()
def bench(reward: Reward, root: str, generator=None, ts=(0, 50, 100, 250, 500), seed=0, split="test", samples=None):
    """R@k text->motion and motion->text on the test split (first caption, whole clip: TMR's protocol),
    over 'all test' and 'batches of 32', for clean motion, forward-noised x_t (feature space, cosine
    schedule) and, with a generator, its one-step prediction from an x_t (empty text, so the caption
    cannot leak in). samples {name: generator}: also each generator's full samples for the same
    captions and lengths (the same noise for every generator), which shows how much retrieval the
    reward itself sees left between a generator and the real motions (the "clean" row)."""
    device = reward.mean.device
    ds = data.MotionTextDataset(root, split, deterministic=True)
    batch = data.collate([ds[i] for i in range(len(ds))])
    x, lengths, mask, captions = batch["motion"].to(device), batch["lengths"].to(device), batch["mask"].to(device), batch["captions"]
    sched = models.DDIMScheduler("cosine", "sample")
    g = torch.Generator(device=device).manual_seed(seed)
    text = reward.text_embed(captions)
    conditions = {}
    for t in ts:
        ab = sched.alpha_bar[t].item() if t else None
        xt = sched.add_noise(x, torch.randn(x.shape, generator=g, device=device), t) * mask[..., None] if t else x
        conditions["clean" if t == 0 else f"noisy t={t}"] = (xt, ab)
        if generator is not None and t:
            conditions[f"x0_hat from t={t}"] = (one_step_prediction(generator, x, lengths, t, g), None)
    for name, gen in (samples or {}).items():                          # (N, T, D) in the generator's normalisation
        feats = gen.sample(captions, lengths, generator=torch.Generator(device=device).manual_seed(seed))
        conditions[f"samples of {name}"] = (reward.normalise(feats * gen.std + gen.mean) * mask[..., None], None)
    out = {}
    perm = np.random.default_rng(seed).permutation(len(x))
    group = min(32, len(x))                                            # a split smaller than 32 is one group
    groups = perm[: len(perm) // group * group].reshape(-1, group)
    for name, (xt, ab) in conditions.items():
        motion = torch.cat([reward.motion_embed(xt[i:i + 256], lengths[i:i + 256], ab) for i in range(0, len(xt), 256)])
        S = (text @ motion.T).cpu()
        row = {}
        for proto, parts in (("all", [np.arange(len(x))]), ("bs32", groups)):
            for direction, M in (("t2m", S), ("m2t", S.T)):
                rs = [recall_at(M[np.ix_(p, p)]) for p in parts]
                row.update({f"{proto} {direction} {k}": float(np.mean([r[k] for r in rs])) for k in rs[0]})
        out[name] = row
    return out


@torch.no_grad()
def one_step_prediction(generator, x, lengths, t, g):
    """x0_hat of a backbone from a forward-noised copy of x at its step t: MDM in feature space, MLD
    on its VAE latent, decoded. Empty text, so only the motion informs the prediction."""
    cond = generator.condition([""] * len(x), lengths)
    if generator.cfg.backbone == "mld":
        z0 = generator.encode(x, cond.mask)[0] * generator.latent_scale
        z_t = generator.scheduler.add_noise(z0, torch.randn(z0.shape, generator=g, device=z0.device), t)
        _, z0_hat = generator.scheduler.step(generator.guided_output(z_t, t, cond, 1.0), t, z_t)
        return generator.decode(z0_hat, cond.mask)
    x_t = generator.scheduler.add_noise(x, torch.randn(x.shape, generator=g, device=x.device), t) * cond.mask[..., None]
    return generator.guided_output(x_t, t, cond, 1.0) * cond.mask[..., None]


def format_bench(results, cols=("R@1", "R@2", "R@3", "R@5", "R@10")):
    lines, w = [], max([28] + [len(name) + 1 for name in results])          # a long checkpoint name widens it
    for proto in ("bs32", "all"):
        for direction in ("t2m", "m2t"):
            lines.append(f"{f'-- {proto} {direction}:':<{w + 3}}" + "  ".join(f"{c:>6}" for c in cols))
            for name, row in results.items():
                lines.append(f"   {name:<{w}}" + "  ".join(f"{row[f'{proto} {direction} {c}']:6.2f}" for c in cols))
    return "\n".join(lines)


# -----------------------------------------------------------------------------


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    trainers = {}
    for name, helptext in (("pretrain", "noise-aware contrastive pretraining"), ("spl", "Algorithm 2 from --init")):
        trainers[name] = sub.add_parser(name, help=helptext)
        common.add_config_args(trainers[name], RewardConfig)
    b = sub.add_parser("bench", help="retrieval R@k of one or more rewards (Tables 4 / S8)")
    b.add_argument("--reward", nargs="+", required=True)
    b.add_argument("--data", required=True)
    b.add_argument("--generator", default=None, help="MLD/MDM checkpoint for the one-step-prediction rows")
    b.add_argument("--samples", nargs="+", default=[], metavar="CKPT",
                   help="generator checkpoints whose full samples (same noise for each) get a row")
    b.add_argument("--device", default="auto")
    b.add_argument("--json", default=None, help="also write each reward's rows and the machine here")
    argv = sys.argv[1:] if argv is None else argv
    a = p.parse_args(argv)
    if a.cmd in ("pretrain", "spl"):
        cfg = common.config_from_args(RewardConfig, a)
        if cfg.preset not in PRESETS:
            raise common.InputError(f"--preset {cfg.preset!r}: tiny or default")
        given = common.given_flags(trainers[a.cmd], argv[1:])           # a flag given wins, even at its default
        over = {**PRESETS[cfg.preset], **(SPL_DEFAULTS if a.cmd == "spl" and cfg.preset == "default" else {})}
        cfg = common.fill(cfg, over, given)
        if a.cmd == "spl" and not cfg.init:
            raise common.InputError("spl needs --init PATH, a reward from `spl.py pretrain`")
        if a.cmd == "pretrain" and cfg.init:
            raise common.InputError(f"--init {cfg.init}: pretrain starts from random weights; --init is spl's")
        common.check_ranges(cfg, d_model=">= 1", heads=">= 1", layers=">= 1", text_layers=">= 1", embed_dim=">= 1",
                          patch=">= 1", tau=(1.0, 100.0), p_noise=(0.0, 1.0), max_t=(0, 999), steps=">= 1",
                          lr="> 0", spl_k=">= 1", spl_weight=">= 0", seed=common.SEED, ckpt_every=">= 1")
        if cfg.d_model % cfg.heads:
            raise common.InputError(f"--heads {cfg.heads}: must divide --d-model {cfg.d_model}")
        if data.UNIT_LENGTH % cfg.patch:                                  # clips are whole units of 4 frames
            raise common.InputError(f"--patch {cfg.patch}: must divide {data.UNIT_LENGTH}, the loader's unit of frames")
        common.output_path(cfg.out, "--out", kind="reward")
        if cfg.init and os.path.abspath(cfg.init) == os.path.abspath(cfg.out):
            raise common.InputError(f"--out {cfg.out}: the same file as --init; give another name")
        train(cfg, a.cmd)
    else:
        if a.json:
            common.output_path(a.json, "--json", (".json",))
        device = common.pick_device(a.device)
        gen = models.load_generator(a.generator, device) if a.generator else None
        samples = {path: models.load_generator(path, device) for path in a.samples}
        rewards = {path: load_reward(path, device) for path in a.reward}
        for path, model in {**rewards, **samples, **({a.generator: gen} if gen else {})}.items():
            data.check_scored(a.data, "test", path, model.mean, model.vocab.itos)    # bench reads the test split
        results = {}
        for path, reward in rewards.items():
            res = bench(reward, a.data, gen, samples=samples)
            results[path] = res
            print(f"== {path}\n{format_bench(res)}")
        if a.json:                                          # the machine: another CPU or GPU rounds otherwise
            common.atomic_write(a.json, json.dumps({"rewards": results, "machine": common.machine(device)}, indent=1))


if __name__ == "__main__":
    common.cli(main)
