r"""
models.py -- compact MLD and MDM, a diffusers-style DDIM sampler, LoRA: the backbones EasyTune tunes.

Paper Sec. 3 (Eq. 2): a pre-trained text-to-motion diffusion model samples x_0 from x_T ~ N(0, I)
by T reverse steps x_{t-1} = pi_theta(x_t, t, c). Two backbones, as in the paper's Tables 1-2:

  MLD (Chen et al. 2023; the paper's main backbone, an ODE sampler): a transformer VAE squeezes a
      motion into a few latent tokens; a transformer denoiser predicts the noise eps in that latent
      space from [latent tokens, timestep token, text tokens]. Scaled-linear betas 0.00085..0.012,
      DDIM with 50 steps and eta = 0, guidance 7.5.
  MDM (Tevet et al. 2023; the paper's SDE example): a transformer in normalised feature space that
      predicts x_0 directly, cosine schedule, 50 ancestral steps (DDIM eta = 1), guidance 2.5.

Both expose the one seam the rest of the project drives (easytune.py, baselines.py, metrics.py):
    cond = model.condition(texts, lengths)            text tokens + frame masks, encoded once
    x_prev, x0_hat = model.denoise_step(x_t, t, cond)  one reverse step pi_theta, with guidance
    feats = model.decode(x, cond.mask)                 normalised 263-d features (VAE decoder / identity)
    feats = model.sample(texts, lengths)               the whole chain
The reward and the evaluator only ever see decoded features.

Notation (code -> paper):  x_t -> x_t,  t -> t (0..999 training index),  eps_hat -> eps_theta,
alpha_bar -> \bar{alpha}_t,  x0_hat -> \hat{x}_0 (one-step prediction),  guidance -> CFG scale w.

NOTE (deviations, for a 2-core CPU): every token is a 4-frame patch (HumanML3D's unit_length), not one
frame; the text encoder is this project's own small word-level transformer, trained with the denoiser
(no CLIP download), and the denoisers attend to its tokens rather than to one pooled vector; blocks
are pre-norm without MLD's long skips; the MLD latent is rescaled to unit variance before diffusion.

Run:  python models.py train --backbone mld --data data/synth --out runs/synth/mld.pt
      python models.py sample --ckpt runs/synth/mld.pt --text "a person waves the left hand" --out motion.npy
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import common
import data

# -----------------------------------------------------------------------------
# Noise schedules and the DDIM / DDPM sampler (diffusers' names, per-sample timesteps, no clipping).


def make_betas(schedule: str, T: int = 1000) -> torch.Tensor:
    if schedule == "scaled_linear":                       # MLD / Stable Diffusion
        return torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, T, dtype=torch.float64) ** 2
    if schedule == "cosine":                              # MDM (Nichol & Dhariwal 2021), beta capped at 0.999
        f = lambda t: torch.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        t = torch.arange(T, dtype=torch.float64)
        return (1 - f(t + 1) / f(t)).clamp(max=0.999)
    raise common.InputError(f"unknown noise schedule {schedule!r} (scaled_linear or cosine)")


class DDIMScheduler:
    """DDIM (Song et al. 2021, Eq. 12) with diffusers' conventions: set_timesteps(T) makes the
    'leading' grid t = (1000 // T) * (T-1 .. 0) + steps_offset (981, 961, ..., 1 for T = 50; the integer
    ratio makes a grid of more than 500 steps start well below 999, as diffusers' does: 600 at T = 600);
    step(...) -> (x_{t-1}, x0_hat). eta = 0 is the deterministic (ODE) sampler MLD uses; eta = 1 is
    DDPM ancestral sampling on the respaced grid (an SDE), whose mean is the paper's Eq. 2 (there
    written with eps_theta; an x0-predicting MDM gives the same mean through x0_hat). Timesteps may
    differ per sample."""

    def __init__(self, schedule: str, prediction_type: str = "epsilon", num_train_timesteps: int = 1000,
                 steps_offset: int = 1, set_alpha_to_one: bool = False):
        self.alpha_bar = torch.cumprod(1 - make_betas(schedule, num_train_timesteps), 0).float()
        self.final_alpha_bar = torch.tensor(1.0) if set_alpha_to_one else self.alpha_bar[0]
        self.prediction_type, self.num_train_timesteps, self.steps_offset = prediction_type, num_train_timesteps, steps_offset
        self.set_timesteps(50)

    def set_timesteps(self, num_inference_steps: int):
        most = self.num_train_timesteps - self.steps_offset          # the first timestep must exist: 999 with offset 1
        if not 1 <= num_inference_steps <= most:
            raise common.InputError(f"steps={num_inference_steps}: must be in 1..{most}")
        self.step_ratio = self.num_train_timesteps // num_inference_steps
        self.timesteps = (torch.arange(num_inference_steps - 1, -1, -1) * self.step_ratio + self.steps_offset).long()

    def _ab(self, t, like):
        """alpha_bar at integer timesteps t (scalar or (B,)), -1 -> the final alpha_bar; shaped to broadcast."""
        t = torch.as_tensor(t, device=like.device).long().reshape(-1)
        ab = torch.where(t >= 0, self.alpha_bar.to(like.device)[t.clamp(min=0)], self.final_alpha_bar.to(like.device))
        return ab.reshape(-1, *([1] * (like.dim() - 1)))

    def add_noise(self, x0, eps, t):
        """q(x_t | x_0): sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps."""
        ab = self._ab(t, x0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * eps

    def step(self, model_output, t, x_t, eta: float = 0.0, noise=None):
        """One reverse step from x_t at training index t to the previous grid point."""
        t = torch.as_tensor(t, device=x_t.device).long()
        ab_t, ab_prev = self._ab(t, x_t), self._ab(t - self.step_ratio, x_t)
        kind = self.prediction_type
        if kind == "epsilon":
            eps = model_output
            x0 = (x_t - (1 - ab_t).sqrt() * eps) / ab_t.sqrt()          # the one-step prediction x0_hat
        elif kind == "sample":
            x0 = model_output
            eps = (x_t - ab_t.sqrt() * x0) / (1 - ab_t).sqrt()
        else:
            raise common.InputError(f"prediction_type {kind!r}: epsilon or sample")
        sigma = eta * ((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)).sqrt()     # DDIM Eq. 16
        x_prev = ab_prev.sqrt() * x0 + (1 - ab_prev - sigma ** 2).clamp(min=0).sqrt() * eps
        if eta > 0:
            x_prev = x_prev + sigma * (noise if noise is not None else torch.randn_like(x_t))
        return x_prev, x0


# -----------------------------------------------------------------------------
# Transformer pieces with plain nn.Linear projections (so LoRA can wrap q, k, v, o).


class Attention(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x, pad=None):                        # x (B, L, d); pad (B, L) True = ignore
        B, L, d = x.shape
        split = lambda y: y.view(B, L, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731  (B, h, L, d/h)
        mask = None if pad is None else ~pad[:, None, None, :]
        y = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)), attn_mask=mask)
        return self.o(y.transpose(1, 2).reshape(B, L, d))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), x + mlp(ln(x))."""

    def __init__(self, d, heads, ff, dropout):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = Attention(d, heads)
        self.fc1, self.fc2 = nn.Linear(d, ff), nn.Linear(ff, d)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, pad=None):
        x = x + self.drop(self.attn(self.ln1(x), pad))
        return x + self.drop(self.fc2(F.gelu(self.fc1(self.ln2(x)))))


class Transformer(nn.Module):
    def __init__(self, d, layers, heads, ff, dropout):
        super().__init__()
        self.blocks = nn.ModuleList(Block(d, heads, ff, dropout) for _ in range(layers))
        self.ln = nn.LayerNorm(d)

    def forward(self, x, pad=None):
        for b in self.blocks:
            x = b(x, pad)
        return self.ln(x)


def timestep_embedding(t, dim):
    """Sinusoidal embedding of (B,) timesteps (float allowed) -> (B, dim), cos first."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], -1)


class TextEncoder(nn.Module):
    """Word-level transformer over data.Vocab ids: <cls> w_1 .. w_L -> (B, L+1, d) tokens."""

    def __init__(self, vocab_size, d, layers, heads, dropout, max_words):
        super().__init__()
        self.max_words = max_words
        self.emb = nn.Embedding(vocab_size, d, padding_idx=0)
        self.pos = nn.Parameter(torch.randn(1, max_words + 1, d) * 0.02)
        self.tf = Transformer(d, layers, heads, 2 * d, dropout)

    def forward(self, ids, pad):
        return self.tf(self.emb(ids) + self.pos[:, :ids.shape[1]], pad)


def patchify(x, p):        # (B, T, D) -> (B, T/p, p*D)
    return x.reshape(x.shape[0], x.shape[1] // p, p * x.shape[2])


def unpatchify(x, p):      # (B, T/p, p*D) -> (B, T, D)
    return x.reshape(x.shape[0], x.shape[1] * p, x.shape[2] // p)


# -----------------------------------------------------------------------------
# LoRA (Hu et al. 2021): W x + (alpha / r) B A x with W frozen, B = 0 at the start.


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16.0):
        super().__init__()
        self.base, self.scale, self.merged = base, alpha / r, False
        self.base.requires_grad_(False)
        like = {"device": base.weight.device, "dtype": base.weight.dtype}      # beside the base (e.g. on CUDA)
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, **like))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, **like))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, x):
        y = self.base(x)
        return y if self.merged else y + (x @ self.lora_A.T @ self.lora_B.T) * self.scale

    @torch.no_grad()
    def merge(self):
        if not self.merged:
            self.base.weight += self.scale * self.lora_B @ self.lora_A
            self.merged = True


def inject_lora(module: nn.Module, r: int = 8, alpha: float = 16.0, targets=("q", "k", "v", "o")) -> list:
    """Wrap every nn.Linear named in `targets` under `module`; freeze everything else in it."""
    module.requires_grad_(False)
    wrapped = []
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if name in targets and isinstance(child, nn.Linear):
                lora = LoRALinear(child, r, alpha)
                setattr(parent, name, lora)
                wrapped.append(lora)
    if not wrapped:
        raise common.InputError(f"inject_lora: no nn.Linear named {targets} found")
    return wrapped


def merge_lora(module: nn.Module):
    """Fold every LoRA update into its base weight and put plain nn.Linear layers back."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LoRALinear):
                child.merge()
                setattr(parent, name, child.base)
    return module


# -----------------------------------------------------------------------------
# Configuration: one dataclass, three presets.


@dataclass
class ModelConfig:
    backbone: str = "mld"           # mld | mdm
    d_model: int = 128              # width of every transformer here (MLD: 256)
    heads: int = 4
    layers: int = 4                 # denoiser depth (MLD: 9, MDM: 8)
    text_layers: int = 2
    vae_layers: int = 3             # MLD VAE encoder and decoder depth each
    latent_dim: int = 16            # MLD latent: one latent_dim token per 4 frames (MLD-1: one 256-d token)
    patch: int = 4                  # frames per token
    dropout: float = 0.0            # MLD/MDM 0.1; 0 on CPU, where Bernoulli masks cost a quarter of a step
    max_words: int = 24
    max_frames: int = data.MAX_LEN
    kl_weight: float = 1e-4         # MLD's VAE KL weight
    p_uncond: float = 0.1           # text dropped for classifier-free guidance
    guidance: float = 7.5           # MLD 7.5, MDM 2.5
    steps: int = 50                 # DDIM steps at sampling
    eta: float = 0.0                # MLD 0 (ODE), MDM 1 (ancestral SDE)


@dataclass
class TrainConfig:
    data: str = "data/synth"
    out: str = "runs/synth/mld.pt"
    backbone: str = "mld"
    preset: str = "default"         # tiny | default | paper
    vae_steps: int = 800            # MLD stage 1 (ignored for MDM); ~90 s on 2 cores
    steps: int = 1200               # denoiser steps; ~165 s (MLD) / ~180 s (MDM) on 2 cores
    batch_size: int = 64
    lr: float = 1e-3                # peak of warmup + cosine (MLD/MDM: 1e-4 constant, far longer)
    weight_decay: float = 0.0
    eval_every: int = 400
    ckpt_every: int = 400
    seed: int = 0
    device: str = "auto"
    resume: bool = False


PRESETS = {  # (ModelConfig overrides, TrainConfig overrides)
    "tiny": ({"d_model": 32, "layers": 1, "text_layers": 1, "vae_layers": 1, "latent_dim": 4, "heads": 2},
             {"vae_steps": 30, "steps": 40, "batch_size": 16, "eval_every": 20, "ckpt_every": 20, "lr": 1e-3}),
    "default": ({}, {}),
    "paper": ({"d_model": 256, "layers": 9, "vae_layers": 9, "text_layers": 4, "latent_dim": 64,
               "patch": 1, "dropout": 0.1}, {"vae_steps": 200_000, "steps": 300_000, "batch_size": 128, "lr": 1e-4,
                             "eval_every": 5000, "ckpt_every": 5000}),
}
BACKBONE_DEFAULTS = {"mld": {}, "mdm": {"guidance": 2.5, "eta": 1.0}}


def model_config(backbone: str, preset: str) -> ModelConfig:
    if backbone not in BACKBONE_DEFAULTS:
        raise common.InputError(f"--backbone {backbone!r}: choose mld or mdm")
    if preset not in PRESETS:
        raise common.InputError(f"--preset {preset!r}: choose one of {', '.join(PRESETS)}")
    return ModelConfig(backbone=backbone, **BACKBONE_DEFAULTS[backbone], **PRESETS[preset][0])


# -----------------------------------------------------------------------------
# The seam shared by both backbones.


@dataclass
class Cond:
    """Everything a denoising step needs besides x_t: the text (conditional and empty) and the masks."""
    tokens: torch.Tensor            # (B, L, d) text tokens
    pad: torch.Tensor               # (B, L) True = padding
    tokens_u: torch.Tensor          # (B, 1, d) the empty text for CFG: the learned null token alone
    pad_u: torch.Tensor             # (B, 1) all False
    lengths: torch.Tensor           # (B,) frames
    mask: torch.Tensor              # (B, T) True on real frames, T = max(lengths)

    def select(self, idx):
        """The items idx, cropped to their longest caption and motion (padding is masked anyway)."""
        pad, lengths = self.pad[idx], self.lengths[idx]
        L, T = int((~pad).sum(1).max()), int(lengths.max())
        return Cond(self.tokens[idx, :L], pad[:, :L], self.tokens_u[idx], self.pad_u[idx], lengths,
                    self.mask[idx, :T])


class Backbone(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab: data.Vocab):
        super().__init__()
        self.cfg, self.vocab = cfg, vocab
        self.text = TextEncoder(len(vocab), cfg.d_model, cfg.text_layers, cfg.heads, cfg.dropout, cfg.max_words)
        self.null_text = nn.Parameter(torch.randn(1, 1, cfg.d_model) * 0.02)
        self.time_mlp = nn.Sequential(nn.Linear(cfg.d_model, cfg.d_model), nn.SiLU(), nn.Linear(cfg.d_model, cfg.d_model))
        self.register_buffer("pos", timestep_embedding(torch.arange(cfg.max_frames // cfg.patch), cfg.d_model)[None])
        self.denoiser = Transformer(cfg.d_model, cfg.layers, cfg.heads, 2 * cfg.d_model, cfg.dropout)
        self.register_buffer("mean", torch.zeros(0), persistent=True)   # dataset statistics, set by train()
        self.register_buffer("std", torch.zeros(0), persistent=True)

    @property
    def device(self):
        return self.null_text.device

    def denoiser_parameters(self):
        """theta of the paper: what fine-tuning may change (the VAE and the text encoder stay frozen)."""
        return [p for n, p in self.named_parameters() if n.startswith(("denoiser.", "time_mlp.", "x_in.", "x_out."))]

    def predict(self, x_t, t, tokens, pad, cond):
        """The network, eps_theta (MLD) or x0_theta (MDM): a transformer over [timestep token, text tokens,
        one token per 4 frames of x_t]; padded frames are masked out of attention. -> shape of x_t."""
        h = self.x_in(self.to_tokens(x_t))                                 # (B, N, d), N = T / patch
        h = torch.cat([self.time_mlp(timestep_embedding(t, self.cfg.d_model))[:, None], tokens,
                       h + self.pos[:, :h.shape[1]]], 1)                   # (B, 1 + L + N, d)
        pad = torch.cat([torch.zeros_like(pad[:, :1]), pad, ~cond.mask[:, ::self.cfg.patch]], 1)
        out = self.x_out(self.denoiser(h, pad)[:, 1 + tokens.shape[1]:])
        return self.mask_latent(self.from_tokens(out), cond)

    def condition(self, texts: list, lengths) -> Cond:
        lengths = torch.as_tensor(lengths, device=self.device).long()
        if (lengths % self.cfg.patch).any() or lengths.min() < self.cfg.patch or lengths.max() > self.cfg.max_frames:
            raise common.InputError(f"lengths must be multiples of {self.cfg.patch} frames in "
                                  f"{self.cfg.patch}..{self.cfg.max_frames}, got {lengths.tolist()}")
        ids, pad = self.vocab.batch(texts, self.cfg.max_words)
        ids, pad = ids.to(self.device), pad.to(self.device)
        tokens = self.text(ids, pad)
        tokens_u = self.null_text.expand(len(texts), 1, -1)
        T = int(lengths.max())
        return Cond(tokens, pad, tokens_u, torch.zeros_like(pad[:, :1]), lengths,
                    torch.arange(T, device=self.device)[None] < lengths[:, None])

    def drop_text(self, cond: Cond, p: float) -> Cond:
        """Classifier-free guidance training: replace each caption by the empty text with probability p
        (the null token followed by padding, so the batch keeps one shape)."""
        drop = torch.rand(len(cond.lengths), device=self.device) < p
        null = torch.cat([cond.tokens_u, torch.zeros_like(cond.tokens[:, 1:])], 1)
        null_pad = torch.cat([cond.pad_u, torch.ones_like(cond.pad[:, 1:])], 1)
        return dataclasses.replace(cond, tokens=torch.where(drop[:, None, None], null, cond.tokens),
                                   pad=torch.where(drop[:, None], null_pad, cond.pad))

    def guided_output(self, x_t, t, cond: Cond, guidance: float):
        """Network output with classifier-free guidance: out_u + w (out_c - out_u). The unconditional
        pass reads the null token alone (padding tokens would be masked out of attention anyway)."""
        t = torch.as_tensor(t, device=x_t.device).long().expand(len(x_t))
        out_c = self.predict(x_t, t, cond.tokens, cond.pad, cond)
        if guidance == 1.0:
            return out_c
        out_u = self.predict(x_t, t, cond.tokens_u, cond.pad_u, cond)
        return out_u + guidance * (out_c - out_u)

    def denoise_step(self, x_t, t, cond: Cond, guidance: float | None = None, eta: float | None = None, noise=None):
        """pi_theta(x_t, t, c) of Eq. 2: one guided reverse step -> (x_{t-1}, x0_hat)."""
        out = self.guided_output(x_t, t, cond, self.cfg.guidance if guidance is None else guidance)
        x_prev, x0 = self.scheduler.step(out, t, x_t, self.cfg.eta if eta is None else eta, noise=noise)
        return self.mask_latent(x_prev, cond), self.mask_latent(x0, cond)

    def init_noise(self, cond: Cond, generator=None):
        """x_T ~ N(0, I) in the backbone's sampling space."""
        x = torch.randn(self.latent_shape(cond), generator=generator, device=self.device)
        return self.mask_latent(x, cond)

    def mask_latent(self, x, cond):
        return x

    @torch.no_grad()
    def sample(self, texts, lengths, steps=None, guidance=None, eta=None, generator=None, chunk=64):
        """The full reverse chain: normalised features (B, T, D), zero on padded frames.
        Items are denoised in chunks of similar length (less padding to compute). The noise is drawn
        for the whole batch before chunking, so a sample does not depend on the chunking (it does depend
        on its place in the batch and the batch's longest length, which shape that draw)."""
        cond = self.condition(texts, lengths)
        self.scheduler.set_timesteps(self.cfg.steps if steps is None else steps)
        x = self.init_noise(cond, generator)                                # x_T, (B, N, latent)
        eta = self.cfg.eta if eta is None else eta
        order = torch.argsort(cond.lengths, descending=True, stable=True)
        parts = [order[i:i + chunk] for i in range(0, len(order), chunk)]
        conds = [cond.select(idx) for idx in parts]
        crop = lambda z, c: z[:, :self.latent_shape(c)[1]]                 # noqa: E731  to c's longest item
        xs = [crop(x[idx], c) for idx, c in zip(parts, conds)]
        for t in self.scheduler.timesteps:
            noise = torch.randn(x.shape, generator=generator, device=self.device) if eta > 0 else None
            for k, (idx, c) in enumerate(zip(parts, conds)):
                xs[k], _ = self.denoise_step(xs[k], t, c, guidance, eta, None if noise is None else crop(noise[idx], c))
        feats = [self.decode(xk, c.mask) for xk, c in zip(xs, conds)]      # (b, T_chunk, D) each
        out = feats[0].new_zeros(len(order), cond.mask.shape[1], feats[0].shape[-1])
        for idx, f in zip(parts, feats):
            out[idx, :f.shape[1]] = f
        return out


class MLD(Backbone):
    """Motion latent diffusion: a VAE (features <-> latent tokens) and an eps-predicting latent denoiser.

    NOTE (deviation): MLD's latent is one 256-d token for the whole clip. Trained for minutes, such a
    global latent averages short events away (0% of kicks and jumps survived reconstruction here), so
    this latent is a sequence: one latent_dim token per 4 frames (as MLD's successors use several
    latent tokens). The denoiser is the shared token transformer of Backbone.predict."""

    def __init__(self, cfg, vocab, dims):
        super().__init__(cfg, vocab)
        d, P = cfg.d_model, cfg.patch
        self.scheduler = DDIMScheduler("scaled_linear", "epsilon")
        self.enc_in = nn.Linear(P * dims, d)
        self.enc_pos = nn.Parameter(torch.randn(1, cfg.max_frames // P, d) * 0.02)
        self.encoder = Transformer(d, cfg.vae_layers, cfg.heads, 2 * d, cfg.dropout)
        self.enc_out = nn.Linear(d, 2 * cfg.latent_dim)                  # mu and log-variance per token
        self.dec_in = nn.Linear(cfg.latent_dim, d)
        self.dec_pos = nn.Parameter(torch.randn(1, cfg.max_frames // P, d) * 0.02)
        self.decoder = Transformer(d, cfg.vae_layers, cfg.heads, 2 * d, cfg.dropout)
        self.dec_out = nn.Linear(d, P * dims)
        self.register_buffer("latent_scale", torch.ones(()))
        self.x_in, self.x_out = nn.Linear(cfg.latent_dim, d), nn.Linear(d, cfg.latent_dim)

    def vae_parameters(self):
        return [p for n, p in self.named_parameters() if n.startswith(("enc", "dec"))]

    def latent_shape(self, cond):
        return (len(cond.lengths), cond.mask.shape[1] // self.cfg.patch, self.cfg.latent_dim)

    def mask_latent(self, z, cond):
        return z * cond.mask[:, ::self.cfg.patch, None]

    def to_tokens(self, z):
        return z

    def from_tokens(self, z):
        return z

    def encode(self, x, mask):
        """(B, T, D) normalised features -> (mu, logvar), each (B, T/4, latent_dim), unscaled."""
        h = self.enc_in(patchify(x, self.cfg.patch))
        h = self.encoder(h + self.enc_pos[:, :h.shape[1]], ~mask[:, ::self.cfg.patch])
        mu, logvar = self.enc_out(h).chunk(2, -1)
        return mu, logvar.clamp(-10, 10)

    def decode(self, z, mask):
        """Scaled latent (B, T/4, latent_dim) -> normalised features (B, T, D), zero where mask (B, T) is False."""
        h = self.dec_in(z / self.latent_scale)
        h = self.decoder(h + self.dec_pos[:, :h.shape[1]], ~mask[:, ::self.cfg.patch])
        return unpatchify(self.dec_out(h), self.cfg.patch) * mask[..., None]

    def diffusion_loss(self, batch, p_uncond=0.0):
        """|| eps - eps_theta(z_t, t, c) ||^2 on real tokens of the frozen VAE's (scaled) latent."""
        cond = self.drop_text(self.condition(batch["captions"], batch["lengths"]), p_uncond)
        with torch.no_grad():
            mode = self.encoder.training
            self.encoder.eval()                           # the frozen VAE without dropout, as latent_std saw it
            z0 = self.encode(batch["motion"], batch["mask"])[0] * self.latent_scale
            self.encoder.train(mode)
        t = torch.randint(0, 1000, (len(z0),), device=z0.device)
        eps = torch.randn_like(z0)
        z_t = self.mask_latent(self.scheduler.add_noise(z0, eps, t), cond)
        m = cond.mask[:, ::self.cfg.patch, None]
        return (((self.predict(z_t, t, cond.tokens, cond.pad, cond) - eps) ** 2) * m).sum() / (m.sum() * z0.shape[-1])

    def vae_loss(self, batch, p_uncond=0.0):
        """MLD stage 1: SmoothL1 reconstruction on real frames + kl_weight KL(q(z|x) || N(0, I))."""
        mu, logvar = self.encode(batch["motion"], batch["mask"])
        z = mu + (0.5 * logvar).exp() * torch.randn_like(mu)
        rec = self.decode(z * self.latent_scale, batch["mask"])
        m, mt = batch["mask"][..., None], batch["mask"][:, ::self.cfg.patch, None]
        rec_loss = (F.smooth_l1_loss(rec, batch["motion"], reduction="none") * m).sum() / (m.sum() * rec.shape[-1])
        kl = (0.5 * (mu ** 2 + logvar.exp() - 1 - logvar) * mt).sum() / (mt.sum() * mu.shape[-1])
        return rec_loss + self.cfg.kl_weight * kl


class MDM(Backbone):
    """Motion diffusion model: the shared token transformer over motion patches, predicting x_0."""

    def __init__(self, cfg, vocab, dims):
        super().__init__(cfg, vocab)
        self.scheduler = DDIMScheduler("cosine", "sample")
        self.x_in, self.x_out = nn.Linear(cfg.patch * dims, cfg.d_model), nn.Linear(cfg.d_model, cfg.patch * dims)
        self.dims = dims

    def latent_shape(self, cond):
        return (len(cond.lengths), cond.mask.shape[1], self.dims)

    def mask_latent(self, x, cond):
        return x * cond.mask[..., None]

    def to_tokens(self, x):
        return patchify(x, self.cfg.patch)

    def from_tokens(self, h):
        return unpatchify(h, self.cfg.patch)

    def decode(self, x, mask):
        return x * mask[..., None]                                       # already features

    def diffusion_loss(self, batch, p_uncond=0.0):
        """|| x_0 - x0_theta(x_t, t, c) ||^2 on real frames (MDM's 'we always predict x_start')."""
        cond = self.drop_text(self.condition(batch["captions"], batch["lengths"]), p_uncond)
        x0, m = batch["motion"], batch["mask"][..., None]
        t = torch.randint(0, 1000, (len(x0),), device=x0.device)
        x_t = self.mask_latent(self.scheduler.add_noise(x0, torch.randn_like(x0), t), cond)
        return (((self.predict(x_t, t, cond.tokens, cond.pad, cond) - x0) ** 2) * m).sum() / (m.sum() * x0.shape[-1])


def build_model(cfg: ModelConfig, vocab: data.Vocab, dims: int = 263) -> Backbone:
    return (MLD if cfg.backbone == "mld" else MDM)(cfg, vocab, dims)


def load_generator(path: str, device="cpu") -> Backbone:
    """A pretrained (or fine-tuned) MLD / MDM from its checkpoint, in eval mode."""
    ck = common.load_checkpoint(path, "generator")
    if not ck.get("done", True):                          # a stopped pretraining saves to its --out as it goes
        raise common.CheckpointError(f"{path}: an unfinished pretraining (stopped before step {ck.get('step')} of "
                                     f"stage {ck.get('stage')}); finish it with python models.py train --resume "
                                     "and its flags")
    with common.entries(path):                            # only the reading: a bug in the model is not the file's
        cfg, vocab, dims, state = ModelConfig(**ck["model_config"]), data.Vocab(ck["vocab"]), int(ck["dims"]), ck["model"]
        mean, std = state["mean"], state["std"]
    model = build_model(cfg, vocab, dims)
    model.mean, model.std = mean, std                                     # size the statistics buffers first
    common.load_state(model, state, path)
    return model.to(device).eval()


def generator_checkpoint(model: Backbone, train_cfg: TrainConfig | None = None, **extra) -> dict:
    return {"kind": "generator", "model_config": dataclasses.asdict(model.cfg), "vocab": model.vocab.itos,
            "dims": int(model.mean.shape[0]), "model": model.state_dict(),
            "train_config": dataclasses.asdict(train_cfg) if train_cfg else None, **extra}


# -----------------------------------------------------------------------------
# Pretraining: one flat loop per stage (MLD: VAE, then denoiser with the VAE frozen; MDM: denoiser).


@torch.no_grad()
def validation_loss(model, loss_fn, val_batches, seed=0):
    """Mean loss on fixed val batches with fixed noise, so successive values are comparable."""
    model.eval()
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):      # training's stream untouched
        torch.manual_seed(seed)
        losses = [loss_fn(b).item() for b in val_batches]
    model.train()
    return float(np.mean(losses))


def to_device(batch, device):
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def train(tc: TrainConfig) -> Backbone:
    common.seed_everything(tc.seed)
    device = common.pick_device(tc.device)
    mc = model_config(tc.backbone, tc.preset)
    train_set = data.MotionTextDataset(tc.data, "train", seed=tc.seed)
    val_set = data.MotionTextDataset(tc.data, "val", seed=tc.seed + 1, deterministic=True)
    if tc.batch_size > len(train_set):                                   # drop_last would leave no batch
        raise common.InputError(f"--batch-size {tc.batch_size}: more than the {len(train_set)} training items of "
                              f"{tc.data}")
    vocab = data.build_vocab(tc.data)
    model = build_model(mc, vocab, train_set.dims).to(device)
    model.mean, model.std = torch.tensor(train_set.mean, device=device), torch.tensor(train_set.std, device=device)
    val_batches = [to_device(b, device) for b in data.loader(val_set, tc.batch_size, shuffle=False)][:4]
    stages = ([("vae", tc.vae_steps)] if mc.backbone == "mld" else []) + [("denoiser", tc.steps)]
    if mc.backbone == "mld" and tc.vae_steps == 0 and not tc.resume:
        print("warning: --vae-steps 0: the denoiser learns the latents of an untrained VAE (a timing run, not a model)")
    start_stage, start_step, opt_state, log, data_rng, elapsed = 0, 0, None, [], None, 0.0
    if common.to_resume(tc.out, tc.resume):
        ck = common.load_checkpoint(tc.out, "generator")
        if ck.get("train_config") is None:
            raise common.CheckpointError(f"{tc.out}: a fine-tuned generator (no pretraining state): nothing to "
                                         "resume; drop --resume, or give another --out")
        with common.entries(tc.out):
            if ck["model_config"] != dataclasses.asdict(mc):
                raise common.CheckpointError(f"{tc.out}: --resume with a different model config "
                                             f"(checkpoint {ck['model_config']}, asked {dataclasses.asdict(mc)})")
            common.check_resumable(ck["train_config"], "cuda" if ck.get("cuda_rng") is not None else "cpu", tc, tc.out,
                                   device, may_change=("resume", "device", "eval_every", "ckpt_every"))  # the same batches
            common.load_state(model, ck["model"], tc.out)
            start_stage, start_step, opt_state, log = ck["stage"], ck["step"], ck["optimizer"], ck["log"]
            elapsed = ck.get("elapsed", log[-1]["time_s"] if log else 0.0)    # the clock goes on, as spl's does
            torch.set_rng_state(ck["rng"])
            data_rng = ck.get("data_rng")                                 # crops and captions of the next batches
            if device.type == "cuda" and ck.get("cuda_rng") is not None:    # the draws that matter on a GPU
                torch.cuda.set_rng_state(ck["cuda_rng"], device)
        print(f"resumed {tc.out} at stage {stages[min(start_stage, len(stages) - 1)][0]} step {start_step}")
    print(f"{mc.backbone}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters on {device}")
    common.print_config(mc, "model")
    common.print_config(tc, "train")
    t0 = time.time() - elapsed
    for si, (stage, n_steps) in enumerate(stages):
        if si < start_stage:
            continue
        if stage == "vae":
            params, loss_fn = model.vae_parameters(), model.vae_loss
        else:
            params, loss_fn = [p for n, p in model.named_parameters() if not n.startswith(("enc", "dec"))], \
                model.diffusion_loss
        opt = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s, n=n_steps: lr_factor(s, n))
        step = start_step if si == start_stage else 0
        if opt_state is not None and si == start_stage:
            with common.entries(tc.out):
                opt.load_state_dict(opt_state)                            # holds the lr of the resumed step
            sched.last_epoch = step
        model.train()
        batches = data.train_batches(train_set, tc.batch_size, tc.seed, start=step,     # resumed: the same stream
                                     data_rng=data_rng if si == start_stage else None)
        bar = tqdm(range(step, n_steps), desc=f"{mc.backbone} {stage}", initial=step, total=n_steps, mininterval=2)
        for step in bar:
            # 1) batch  2) forward + loss  3) backward, clip, step  4) eval / checkpoint
            loss = loss_fn(to_device(next(batches), device), mc.p_uncond)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
            last = step + 1 == n_steps
            if (step + 1) % tc.eval_every == 0 or last:
                val = validation_loss(model, loss_fn, val_batches)
                log.append({"stage": stage, "step": step + 1, "train_loss": loss.item(), "val_loss": val,
                            "time_s": time.time() - t0})
                tqdm.write(f"{stage} step {step + 1}: train {loss.item():.4f}  val {val:.4f}")
            if last and stage == "vae":
                model.latent_scale.fill_(latent_std(model, train_set, device) ** -1)
            if (step + 1) % tc.ckpt_every == 0 or last:
                done = last and si == len(stages) - 1
                nxt = (si + 1, 0) if last else (si, step + 1)
                common.atomic_save(generator_checkpoint(model, tc, stage=nxt[0], step=nxt[1], optimizer=None if last
                                 else opt.state_dict(), rng=torch.get_rng_state(), log=log, done=done,
                                 elapsed=time.time() - t0,
                                 data_rng=train_set.rng.bit_generator.state,
                                 cuda_rng=torch.cuda.get_rng_state(device) if device.type == "cuda" else None), tc.out)
        opt_state = None
    print(f"trained {mc.backbone} in {time.time() - t0:.0f}s -> {tc.out}")
    return model.eval()


def lr_factor(step, total, warmup_frac=0.05, floor=0.1):
    """nanoGPT's schedule as a multiplier: 1) linear warmup over 5% of the steps, 2) cosine decay to
    10% of the peak at the end."""
    warmup = max(1, int(warmup_frac * total))
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def latent_std(model, dataset, device, batches=8):
    """Std of the VAE means over training clips; the latent is divided by it before diffusion."""
    model.eval()
    mus = [model.encode(b["motion"], b["mask"])[0][b["mask"][:, ::model.cfg.patch]] for b in
           (to_device(b, device) for b, _ in zip(data.loader(dataset, 64, shuffle=True), range(batches)))]
    model.train()
    return float(torch.cat(mus).std())


# -----------------------------------------------------------------------------


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="pretrain MLD or MDM on a HumanML3D-format folder")
    common.add_config_args(t, TrainConfig)
    s = sub.add_parser("sample", help="generate one motion from a caption")
    s.add_argument("--ckpt", required=True)
    s.add_argument("--text", required=True)
    s.add_argument("--seconds", type=float, default=4.0)
    s.add_argument("--out", default="motion.npy", help="features (T, D); joints go to <out>_joints.npy")
    s.add_argument("--steps", type=int, default=None)
    s.add_argument("--guidance", type=float, default=None)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto")
    argv = sys.argv[1:]
    a = p.parse_args(argv)
    if a.cmd == "train":
        tc = common.config_from_args(TrainConfig, a)
        model_config(tc.backbone, tc.preset)                              # validates backbone and preset
        given = common.given_flags(t, argv[1:])                            # a flag given wins, even at its default
        tc = common.fill(tc, PRESETS[tc.preset][1], given)
        common.check_ranges(tc, vae_steps=">= 0", steps=">= 1", batch_size=">= 1", lr="> 0", weight_decay=">= 0",
                          eval_every=">= 1", ckpt_every=">= 1", seed=common.SEED)
        if not os.path.isdir(tc.data):
            raise common.InputError(f"--data {tc.data}: folder not found (make one with python data.py synth)")
        common.output_path(tc.out, "--out", kind="generator")
        train(tc)
    else:
        common.check_ranges(a, seconds="> 0", seed=common.SEED, steps=(1, 999), guidance=">= 0")
        data.check_text(a.text)
        stem = os.path.splitext(common.output_path(a.out, "--out", (".npy",)))[0]
        common.output_path(f"{stem}_joints.npy", "--out (its joints)")       # both checked before any work
        device = common.pick_device(a.device)
        model = load_generator(a.ckpt, device)
        words, L = data.words(a.text), model.cfg.max_words
        unknown = [w for w in words[:L] if w not in model.vocab.stoi]                 # each read as <unk>
        if len(unknown) == len(words[:L]):        # <cls> and <unk> alone: no condition the model was trained on
            raise common.InputError(f"--text {a.text!r}: none of its words is in {a.ckpt}'s vocabulary (its training "
                                    f"captions' {len(model.vocab) - 3} words, e.g. {', '.join(model.vocab.itos[3:8])})")
        notes = ([f"{', '.join(unknown)} not in the model's vocabulary, read as <unk>"] if unknown else []) + \
                ([f"only the first {L} of its {len(words)} words are read"] if len(words) > L else [])
        if notes:
            print(f"warning: --text: {'; '.join(notes)}", file=sys.stderr)
        fps = data.skeleton_for_dims(int(model.mean.shape[0])).fps          # 20 (HumanML3D) or 12.5 (KIT-ML)
        frames = int(round(a.seconds * fps / model.cfg.patch)) * model.cfg.patch
        if not model.cfg.patch <= frames <= model.cfg.max_frames:
            raise common.InputError(f"--seconds {a.seconds}: must give 1..{model.cfg.max_frames} frames")
        g = torch.Generator(device=device).manual_seed(a.seed)
        feats = model.sample([a.text], [frames], a.steps, a.guidance, generator=g)[0]
        feats = (feats * model.std + model.mean).cpu().numpy()
        joints = data.recover_from_ric(feats)
        np.save(a.out, feats)
        np.save(f"{stem}_joints.npy", joints)
        print(f"wrote {a.out} {feats.shape} and {stem}_joints.npy {joints.shape}")


if __name__ == "__main__":
    common.cli(main)
