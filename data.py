"""
data.py -- the HumanML3D on-disk format, its geometry, and one loader for any such folder.

EasyTune (ICLR 2026) is evaluated on HumanML3D and KIT-ML (paper Sec. 5.1). Neither can be
downloaded here (HumanML3D is rebuilt from licensed AMASS), so the project ships a procedural
benchmark (synth.py) that writes exactly HumanML3D's files; this module reads that format,
whether the folder came from synth.py or from the real HumanML3D / KIT-ML.

    folder/
      new_joint_vecs/<name>.npy   (T, 263) features (251 for KIT-ML), float32
      new_joints/<name>.npy       (T, 22, 3) joint positions in metres, Y up
      texts/<name>.txt            lines "caption#word/POS word/POS ...#start#end" (seconds; 0#0 = whole clip)
      Mean.npy, Std.npy           (263,) normalisation; Std is averaged within 7 feature groups
      train.txt val.txt test.txt all.txt   clip names, one per line ("M" prefix = left-right mirror)

The 263 features of one frame (J = 22 joints), in order:
    root angular velocity about Y (1, a *half* angle per frame), root linear velocity XZ in the root
    frame (2), root height (1), "ric" joint positions 1..21 relative to the root, facing +Z (63),
    6D rotations of joints 1..21 (126), local joint velocities (66), foot contacts L, R (4).

Run:
    python data.py synth --out data/synth --motions 1600 --seed 0   # write the embedded benchmark
    python data.py check --data data/synth                           # validate any such folder

The plumbing every module shares (errors that exit 2, checkpoints, configs as flags) is common.py.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import warnings
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

import common


class DataError(common.InputError):
    """A dataset folder, clip or caption line is malformed."""


# -----------------------------------------------------------------------------
# Skeletons (facts from HumanML3D's paramUtil; the bone lengths are those of a real clip).


@dataclass(frozen=True)
class Skeleton:
    name: str
    joints: int
    chains: tuple            # polylines from the root outwards; also the IK chains
    raw_offsets: np.ndarray  # (J, 3) unit rest direction of each joint from its parent (IK reference)
    feet_left: tuple         # (ankle, toe) joint indices
    feet_right: tuple
    face_joints: tuple       # (r_hip, l_hip, r_shoulder, l_shoulder): defines the facing direction
    mirror_pairs: tuple      # left/right joint pairs swapped by a mirror
    fps: float
    min_len: int             # the real loaders keep clips with min_len <= T < 200
    foot_threshold: float    # squared displacement per frame below which a foot is in contact
    metres: float = 1.0      # the joints' unit in metres (KIT-ML's are millimetres)

    @property
    def dims(self) -> int:
        return 12 * self.joints - 1  # 4 + 3(J-1) + 6(J-1) + 3J + 4

    @property
    def parents(self) -> list:
        parents = [-1] * self.joints
        for chain in self.chains:
            for a, b in zip(chain[:-1], chain[1:]):
                parents[b] = a
        return parents


HUMANML3D = Skeleton(
    name="humanml3d", joints=22,
    # 0 pelvis 1 L_hip 2 R_hip 3 spine1 4 L_knee 5 R_knee 6 spine2 7 L_ankle 8 R_ankle 9 spine3
    # 10 L_foot 11 R_foot 12 neck 13 L_collar 14 R_collar 15 head 16 L_shoulder 17 R_shoulder
    # 18 L_elbow 19 R_elbow 20 L_wrist 21 R_wrist.  Facing +Z, the left side is +X.
    chains=((0, 2, 5, 8, 11), (0, 1, 4, 7, 10), (0, 3, 6, 9, 12, 15), (9, 14, 17, 19, 21), (9, 13, 16, 18, 20)),
    raw_offsets=np.array([[0, 0, 0], [1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, -1, 0], [0, 1, 0],
                          [0, -1, 0], [0, -1, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1], [0, 1, 0], [1, 0, 0],
                          [-1, 0, 0], [0, 0, 1], [0, -1, 0], [0, -1, 0], [0, -1, 0], [0, -1, 0],
                          [0, -1, 0], [0, -1, 0]], dtype=np.float64),
    feet_left=(7, 10), feet_right=(8, 11), face_joints=(2, 1, 17, 16),
    mirror_pairs=((1, 2), (4, 5), (7, 8), (10, 11), (13, 14), (16, 17), (18, 19), (20, 21)),
    fps=20.0, min_len=40, foot_threshold=0.002)

# Rest pose of the synthetic skeleton (metres, offset of each joint from its parent, arms hanging).
# Bone lengths follow HumanML3D clip 012314: legs 0.11/0.39/0.43/0.15, spine 0.13/0.14/0.06/0.22/0.10,
# arms 0.14/0.12/0.26/0.27.
T2M_BONE_OFFSETS = np.array([
    [0.0, 0.0, 0.0],
    [0.06, -0.09, 0.0], [-0.06, -0.09, 0.0], [0.0, 0.13, -0.01],     # hips, spine1
    [0.0, -0.39, 0.0], [0.0, -0.39, 0.0], [0.0, 0.14, 0.0],          # knees, spine2
    [0.0, -0.43, -0.01], [0.0, -0.43, -0.01], [0.0, 0.06, 0.01],     # ankles, spine3
    [0.0, -0.07, 0.13], [0.0, -0.07, 0.13], [0.0, 0.22, 0.0],        # toes, neck
    [0.07, 0.12, 0.0], [-0.07, 0.12, 0.0], [0.0, 0.09, 0.04],        # collars, head
    [0.12, -0.01, 0.0], [-0.12, -0.01, 0.0],                         # shoulders
    [0.0, -0.26, 0.0], [0.0, -0.26, 0.0],                            # elbows
    [0.0, -0.27, 0.0], [0.0, -0.27, 0.0]])                           # wrists

KIT = Skeleton(
    name="kit", joints=21,
    chains=((0, 11, 12, 13, 14, 15), (0, 16, 17, 18, 19, 20), (0, 1, 2, 3, 4), (3, 5, 6, 7), (3, 8, 9, 10)),
    raw_offsets=np.array([[0, 0, 0], [0, 1, 0], [0, 1, 0], [0, 1, 0], [0, 1, 0], [1, 0, 0], [0, -1, 0],
                          [0, -1, 0], [-1, 0, 0], [0, -1, 0], [0, -1, 0], [1, 0, 0], [0, -1, 0],
                          [0, -1, 0], [0, 0, 1], [0, 0, 1], [-1, 0, 0], [0, -1, 0], [0, -1, 0],
                          [0, 0, 1], [0, 0, 1]], dtype=np.float64),
    feet_left=(19, 20), feet_right=(14, 15), face_joints=(11, 16, 5, 8),
    mirror_pairs=((5, 8), (6, 9), (7, 10), (11, 16), (12, 17), (13, 18), (14, 19), (15, 20)),
    fps=12.5, min_len=24, foot_threshold=0.05, metres=0.001)

SKELETONS = {HUMANML3D.dims: HUMANML3D, KIT.dims: KIT}  # 263 -> HumanML3D, 251 -> KIT-ML
MAX_LEN = 196       # max_motion_length of the real loaders (frames kept after unit cropping)
UNIT_LENGTH = 4     # lengths are floored to a multiple of 4 frames


def skeleton_for_dims(dims: int, where: str = "features") -> Skeleton:
    if dims not in SKELETONS:
        raise DataError(f"{where}: expected 263 (HumanML3D) or 251 (KIT-ML) features per frame, got {dims}")
    return SKELETONS[dims]


# -----------------------------------------------------------------------------
# Quaternions (w, x, y, z), written once for numpy arrays and torch tensors alike (qbetween and
# quat_to_6d: numpy only, used only when features are made from joints).


def _stack(x, parts):
    return torch.stack(parts, -1) if isinstance(x, torch.Tensor) else np.stack(parts, -1)


def _cross(a, b):
    ax, ay, az = a[..., 0], a[..., 1], a[..., 2]
    bx, by, bz = b[..., 0], b[..., 1], b[..., 2]
    return _stack(a, [ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx])


def qinv(q):
    return _stack(q, [q[..., 0], -q[..., 1], -q[..., 2], -q[..., 3]])


def qmul(q, r):
    w1, x1, y1, z1 = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    w2, x2, y2, z2 = r[..., 0], r[..., 1], r[..., 2], r[..., 3]
    return _stack(q, [w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2, w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
                      w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2, w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2])


def qrot(q, v):
    """Rotate vectors v (..., 3) by unit quaternions q (..., 4): v + 2 (w (u x v) + u x (u x v))."""
    u, w = q[..., 1:], q[..., :1]
    uv = _cross(u, v)
    return v + 2 * (w * uv + _cross(u, uv))


def qbetween(u, v):
    """The shortest rotation taking direction u to direction v (both (..., 3))."""
    w = np.sqrt((u ** 2).sum(-1) * (v ** 2).sum(-1)) + (u * v).sum(-1)
    q = np.concatenate([w[..., None], np.cross(u, v)], -1)
    return q / np.linalg.norm(q, axis=-1, keepdims=True).clip(1e-12)


def yaw_quat(angle):
    """Rotation by `angle` (radians) about +Y as a quaternion; angle > 0 turns +Z towards +X (left)."""
    cos, sin = (torch.cos, torch.sin) if isinstance(angle, torch.Tensor) else (np.cos, np.sin)
    half = angle / 2
    return _stack(angle, [cos(half), half * 0, sin(half), half * 0])


def quat_to_6d(q):
    """First two columns of the rotation matrix, concatenated (HumanML3D's cont6d), (..., 6)."""
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    col0 = [1 - 2 * (y * y + z * z), 2 * (x * y + w * z), 2 * (x * z - w * y)]
    col1 = [2 * (x * y - w * z), 1 - 2 * (x * x + z * z), 2 * (y * z + w * x)]
    return np.stack(col0 + col1, -1)


# -----------------------------------------------------------------------------
# Joints <-> features: HumanML3D's motion_representation and recover_from_ric.


def facing_yaw(joints: np.ndarray, skel: Skeleton = HUMANML3D, smooth: float = 0.0) -> np.ndarray:
    """Per-frame heading (radians, 0 = facing +Z, > 0 turned towards +X), unwrapped. joints (T, J, 3).

    smooth = 0: forward = up x ((r_hip - l_hip) + (r_shoulder - l_shoulder)), as process_file uses to
    face the first frame to +Z. smooth > 0: the heading HumanML3D's features were built with (its IK):
    the hip pair enters with the opposite sign, (l_hip - r_hip) + (r_shoulder - l_shoulder), and the
    forward vector is Gaussian-smoothed over time with that sigma (20 frames). Checked on the real
    sample: this reproduces its root angular velocities (tests/test_data.py)."""
    r_hip, l_hip, r_sh, l_sh = skel.face_joints
    hips = joints[:, r_hip] - joints[:, l_hip]
    across = (-hips if smooth else hips) + joints[:, r_sh] - joints[:, l_sh]
    across = across / np.linalg.norm(across, axis=-1, keepdims=True).clip(1e-12)
    forward = np.stack([across[:, 2], -across[:, 0]], -1)          # (0, 1, 0) x across, as (x, z)
    if smooth:
        from scipy.ndimage import gaussian_filter1d
        forward = gaussian_filter1d(forward, smooth, axis=0, mode="nearest")
    return np.unwrap(np.arctan2(forward[:, 0], forward[:, 1]))


HEADING_SMOOTH = 20.0  # sigma (frames) of the heading filter in HumanML3D's feature extraction


def features_from_joints(joints: np.ndarray, skel: Skeleton = HUMANML3D):
    """(T, J, 3) joint positions -> ((T-1, D) features, (T-1, J, 3) the joints they decode to).

    The steps of HumanML3D's motion_representation minus the retargeting to a reference skeleton:
    floor at y = 0, first root at the XZ origin, first frame facing +Z, then the root / ric / rot6d /
    velocity / contact channels in the smoothed root frame. recover_from_ric(features) gives back
    the returned joints (to float32 precision)."""
    p = np.asarray(joints, dtype=np.float64).copy()
    if p.ndim != 3 or p.shape[1:] != (skel.joints, 3) or len(p) < 2:
        raise DataError(f"features_from_joints: expected (T >= 2, {skel.joints}, 3) joints, got {p.shape}")
    p[..., 1] -= p[..., 1].min()                                  # 1. lowest point on the floor
    p -= p[0, 0] * np.array([1.0, 0.0, 1.0])                      # 2. first root XZ at the origin
    p = qrot(yaw_quat(np.full(p.shape[:2], -facing_yaw(p, skel)[0])), p)   # 3. first frame faces +Z
    yaw = facing_yaw(p, skel, HEADING_SMOOTH)
    yaw[0] = 0.0                                                   # HumanML3D sets frame 0 to identity
    r_rot = yaw_quat(-yaw)                                        # (T, 4) world -> root frame
    r_rot_j = np.repeat(r_rot[:, None], skel.joints, 1)           # (T, J, 4)

    # root channels: half-angle increments, velocity in the next frame's root frame, height
    rot_vel = (-yaw[1:] / 2) - (-yaw[:-1] / 2)                    # = arcsin(y of r_rot[t+1] r_rot[t]^-1)
    lin_vel = qrot(r_rot[1:], p[1:, 0] - p[:-1, 0])[:, [0, 2]]
    root_y = p[:-1, 0, 1]
    # ric: joints 1.. relative to the root in XZ, rotated so the root faces +Z (Y stays absolute)
    ric = p.copy()
    ric[..., [0, 2]] -= p[:, :1, [0, 2]]
    ric = qrot(r_rot_j, ric)[:-1, 1:].reshape(len(p) - 1, -1)
    # rot6d: naive IK, each bone's rotation from its rest direction, relative to its parent
    quat = np.zeros(p.shape[:2] + (4,))
    quat[:, 0] = r_rot
    for chain in skel.chains:
        R = r_rot
        for a, b in zip(chain[:-1], chain[1:]):
            u = np.broadcast_to(skel.raw_offsets[b], (len(p), 3))
            v = p[:, b] - p[:, a]
            v = v / np.linalg.norm(v, axis=-1, keepdims=True).clip(1e-12)
            R_loc = qmul(qinv(R), qbetween(u, v))
            quat[:, b] = R_loc
            R = qmul(R, R_loc)
    rot6d = quat_to_6d(quat[:-1, 1:]).reshape(len(p) - 1, -1)
    # local velocities (global displacement in the current root frame) and foot contacts
    local_vel = qrot(r_rot_j[:-1], p[1:] - p[:-1]).reshape(len(p) - 1, -1)
    def contact(idx):
        return (((p[1:, idx] - p[:-1, idx]) ** 2).sum(-1) < skel.foot_threshold).astype(np.float64)
    feet = np.concatenate([contact(list(skel.feet_left)), contact(list(skel.feet_right))], -1)

    feats = np.concatenate([rot_vel[:, None], lin_vel, root_y[:, None], ric, rot6d, local_vel, feet], -1)
    assert feats.shape[1] == skel.dims
    return feats.astype(np.float32), p[:-1].astype(np.float32)


def recover_from_ric(features, joints_num: int | None = None):
    """(..., T, D) features (numpy or torch, NOT normalised) -> (..., T, J, 3) joint positions.

    1. heading: theta_0 = 0, theta_t = sum_{k<t} features[k, 0]; r_rot_t = (cos theta, 0, sin theta, 0)
    2. root XZ: velocities of the previous frame, rotated back by r_rot_t^-1, summed over time
    3. ric joints rotated back by r_rot_t^-1, plus the root's X and Z; the root is prepended."""
    dims = features.shape[-1]
    J = joints_num or (dims + 1) // 12
    if dims != 12 * J - 1:
        raise DataError(f"recover_from_ric: {dims} features do not match {J} joints (expected {12 * J - 1})")
    zeros = torch.zeros_like if isinstance(features, torch.Tensor) else np.zeros_like
    cumsum = torch.cumsum if isinstance(features, torch.Tensor) else np.cumsum
    theta = zeros(features[..., 0])
    theta[..., 1:] = features[..., :-1, 0]
    theta = cumsum(theta, -1)                                          # (..., T) half angles
    r_rot = yaw_quat(2 * theta)                                        # (cos theta, 0, sin theta, 0)
    r_pos = zeros(features[..., :3])
    r_pos[..., 1:, 0] = features[..., :-1, 1]
    r_pos[..., 1:, 2] = features[..., :-1, 2]
    r_pos = cumsum(qrot(qinv(r_rot), r_pos), -2)                       # (..., T, 3)
    r_pos[..., 1] = features[..., 3]
    ric = features[..., 4:4 + 3 * (J - 1)].reshape(features.shape[:-1] + (J - 1, 3))
    rot_inv = qinv(r_rot)[..., None, :]
    rot_inv = rot_inv.expand(ric.shape[:-1] + (4,)) if isinstance(ric, torch.Tensor) else \
        np.broadcast_to(rot_inv, ric.shape[:-1] + (4,))
    pos = qrot(rot_inv, ric)
    pos[..., 0] = pos[..., 0] + r_pos[..., None, 0]
    pos[..., 2] = pos[..., 2] + r_pos[..., None, 2]
    cat = torch.cat if isinstance(pos, torch.Tensor) else np.concatenate
    return cat([r_pos[..., None, :], pos], -2)


def mirror_joints(joints: np.ndarray, skel: Skeleton = HUMANML3D) -> np.ndarray:
    """Left-right mirror: negate X and swap left/right joints (how HumanML3D makes its M* clips)."""
    m = np.array(joints, dtype=np.float64, copy=True)
    m[..., 0] *= -1
    for a, b in skel.mirror_pairs:
        m[..., [a, b], :] = m[..., [b, a], :]
    return m


MIRROR_WORDS = {"left": "right", "right": "left", "clockwise": "counterclockwise",
                "counterclockwise": "clockwise", "anticlockwise": "clockwise"}


def mirror_text(text: str) -> str:
    """Swap left/right and clockwise/counterclockwise, as HumanML3D's mirrored captions do."""
    return re.sub(r"[a-z]+", lambda m: MIRROR_WORDS.get(m.group(0), m.group(0)), text)


def mean_std(features: list, joints: int) -> tuple:
    """Mean over all frames, and the per-dimension std replaced by its average within each of the
    7 groups (rot-vel, lin-vel, root-y, ric, rot6d, local-vel, contacts), as cal_mean_variance does."""
    allf = np.concatenate(features, 0).astype(np.float64)
    mean, std = allf.mean(0), allf.std(0)
    edges = np.cumsum([0, 1, 2, 1, 3 * (joints - 1), 6 * (joints - 1), 3 * joints, 4])
    for a, b in zip(edges[:-1], edges[1:]):
        std[a:b] = std[a:b].mean()
    return mean.astype(np.float32), np.maximum(std, 1e-6).astype(np.float32)


# -----------------------------------------------------------------------------
# Captions and the word-level vocabulary.


def words(caption: str) -> list:
    """Lower-cased alphabetic words of a caption: the tokenizer of every text encoder here."""
    return re.findall(r"[a-z]+", caption.lower())


def lemma(token: str) -> str:
    """'walk/VERB' -> 'walk': the evaluator's text unit (T2M's), where the other encoders read words()."""
    return token.rsplit("/", 1)[0]


def check_text(text: str, flag: str = "--text") -> str:
    """A caption typed on the command line needs a word the text encoders read: with none it would be
    encoded as <cls> alone, a condition no model was trained on (not CFG's null text), and sampled silently."""
    if not words(text):
        raise common.InputError(f"{flag} {text!r}: no words (letters a-z) to condition on")
    return text


def parse_caption_line(line: str, where: str) -> tuple:
    """'caption#word/POS ...#start#end' -> (caption, [word/POS], start_s, end_s)."""
    parts = line.rstrip("\n").split("#")
    if len(parts) != 4 or not parts[0].strip():
        raise DataError(f"{where}: malformed caption line, expected 'caption#word/POS ...#start#end', "
                        f"got {line.strip()[:80]!r}")
    caption, tokens, start, end = parts
    try:
        start, end = float(start or 0), float(end or 0)
    except ValueError:
        raise DataError(f"{where}: start/end must be numbers (seconds), got {parts[2]!r} and {parts[3]!r}")
    start, end = (0.0 if math.isnan(v) else v for v in (start, end))    # T2M's loader: NaN reads as 0.0
    tokens = tokens.split()
    if not tokens:                                    # the evaluator reads these (T2M's word/POS), not the caption
        raise DataError(f"{where}: no word/POS tokens after the caption, got {line.strip()[:80]!r}")
    if any("/" not in t for t in tokens):
        raise DataError(f"{where}: tokens must be 'word/POS', got {parts[1][:60]!r}")
    if not (math.isfinite(start) and math.isfinite(end)) or start < 0 or end < 0:
        raise DataError(f"{where}: bad time span {start}..{end}")
    return caption.strip(), tokens, start, end       # end < start: an empty piece, skipped by the loader as T2M's


def format_caption_line(words: list, start: float = 0.0, end: float = 0.0) -> str:
    """The inverse of parse_caption_line: [(surface, lemma, POS) or punctuation] -> 'caption#lemma/POS ...#start#end'."""
    text = ""
    for w in words:
        text += w if isinstance(w, str) else (" " if text else "") + w[0]
    tokens = " ".join(f"{w[1]}/{w[2]}" for w in words if not isinstance(w, str))
    return f"{text}.#{tokens}#{start}#{end}"


class Vocab:
    """Word -> id over the training captions, most frequent first; ties broken alphabetically so a
    rebuild from the same captions gives the same ids. Unknown words map to <unk>."""
    PAD, UNK, CLS = "<pad>", "<unk>", "<cls>"

    def __init__(self, itos: list):
        self.itos = list(itos)
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        if self.itos[:3] != [self.PAD, self.UNK, self.CLS]:
            raise DataError("vocabulary must start with <pad>, <unk>, <cls>")

    @classmethod
    def build(cls, captions) -> "Vocab":
        counts = Counter(w for c in captions for w in words(c))
        return cls([cls.PAD, cls.UNK, cls.CLS] + sorted(counts, key=lambda w: (-counts[w], w)))

    def __len__(self):
        return len(self.itos)

    def encode(self, caption: str, max_words: int = 24) -> list:
        return [self.stoi.get(w, 1) for w in words(caption)[:max_words]]

    def batch(self, captions: list, max_words: int = 24) -> tuple:
        """Captions -> ((B, L) ids starting with <cls>, (B, L) bool padding mask, True = pad)."""
        ids = [[2] + self.encode(c, max_words) for c in captions]
        L = max(len(x) for x in ids)
        out = torch.zeros(len(ids), L, dtype=torch.long)
        for i, x in enumerate(ids):
            out[i, :len(x)] = torch.tensor(x)
        return out, out == 0


# -----------------------------------------------------------------------------
# The loader: any HumanML3D-format folder.


def read_text(path: str) -> list:
    """The lines of a UTF-8 text file (captions, splits); anything else is a DataError naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.readlines()
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None


def read_npy(path: str) -> np.ndarray:
    """A .npy array; a truncated or foreign file is a DataError naming it (not numpy's traceback)."""
    try:
        x = np.load(path)
    except Exception as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    if not isinstance(x, np.ndarray):                         # np.load opens any zip: an .npz or a checkpoint
        x.close()
        raise DataError(f"{path}: a zip archive (an .npz or a .pt?), not a .npy array")
    return x


def read_split(root: str, split: str) -> list:
    path = os.path.join(root, f"{split}.txt")
    if not os.path.isfile(path):
        raise DataError(f"{path}: split file not found")
    names = [ln.strip() for ln in read_text(path) if ln.strip()]
    if not names:
        raise DataError(f"{path}: split is empty")
    return names


def load_stats(root: str) -> tuple:
    if not os.path.isdir(root):
        raise DataError(f"{root}: dataset folder not found")
    out = []
    for fname in ("Mean.npy", "Std.npy"):
        path = os.path.join(root, fname)
        if not os.path.isfile(path):
            raise DataError(f"{path}: normalisation statistics not found")
        raw = read_npy(path)
        try:
            a = raw.astype(np.float32)
        except (ValueError, TypeError):
            raise DataError(f"{path}: expected numbers, got {raw.dtype}") from None
        if a.ndim != 1:
            raise DataError(f"{path}: expected a vector, got shape {a.shape}")
        skeleton_for_dims(a.shape[0], path)
        if not np.isfinite(a).all():
            raise DataError(f"{path}: contains NaN or Inf")
        out.append(a)
    if out[0].shape != out[1].shape:
        raise DataError(f"{root}: Mean.npy has {out[0].shape[0]} values but Std.npy has {out[1].shape[0]}")
    if (out[1] <= 0).any():
        raise DataError(f"{os.path.join(root, 'Std.npy')}: std must be positive, dim {int(np.argmin(out[1]))} "
                        f"is {out[1].min()}")
    return out[0], out[1]


def load_clip(root: str, name: str, dims: int) -> np.ndarray:
    path = os.path.join(root, "new_joint_vecs", f"{name}.npy")
    if not os.path.isfile(path):
        raise DataError(f"{path}: clip listed in the split but its features are missing")
    x = read_npy(path)
    if x.ndim != 2 or x.shape[1] != dims:
        raise DataError(f"{path}: expected (frames, {dims}) features, got shape {x.shape}")
    bad = ~np.isfinite(x).all(1)
    if bad.any():
        raise DataError(f"{path}: NaN or Inf at frame {int(np.argmax(bad))}")
    return x.astype(np.float32)


def load_captions(root: str, name: str) -> list:
    path = os.path.join(root, "texts", f"{name}.txt")
    if not os.path.isfile(path):
        raise DataError(f"{path}: captions missing for clip {name}")
    lines = [(i + 1, ln) for i, ln in enumerate(read_text(path)) if ln.strip()]
    if not lines:
        raise DataError(f"{path}: no caption lines")
    return [parse_caption_line(ln, f"{path}:{i}") for i, ln in lines]


class MotionTextDataset(torch.utils.data.Dataset):
    """Clips and captions of one split, as the T2M / MLD / MDM loaders read them.

    - Clips with min_len <= T < 200 frames are kept (40 for HumanML3D, 24 for KIT-ML); the others
      are skipped and counted in a single warning.
    - A caption with a time span of a kept clip becomes its own item, motion[int(start*fps):int(end*fps)],
      if that piece passes the same filter.
    - Each fetch picks one caption at random and floors the length to a multiple of 4 frames
      (one time in three, one unit more, but never below min_len: a departure from T2M's loader,
      which can crop a 40-frame clip to 36), cropping a random window; features are normalised
      with the folder's Mean/Std. `deterministic=True` takes the first caption and the whole clip
      (floored), for evaluation protocols that want a fixed pairing.
    """

    def __init__(self, root: str, split: str = "train", seed: int = 0, deterministic: bool = False,
                 names: list | None = None):
        self.root, self.split, self.deterministic = root, split, deterministic
        self.mean, self.std = load_stats(root)                             # a missing folder is named there
        self.dims = self.mean.shape[0]
        self.skel = skeleton_for_dims(self.dims, os.path.join(root, "Mean.npy"))
        self.rng = np.random.default_rng(seed)
        self.items, skipped = [], 0    # item = (name, raw motion (T, D), [(caption, tokens)])
        for name in names if names is not None else read_split(root, split):
            motion, caps = load_clip(root, name, self.dims), load_captions(root, name)
            if not self.skel.min_len <= len(motion) < 200:        # the whole clip, its pieces too (as T2M's)
                skipped += 1
                continue
            whole = []
            for caption, tokens, start, end in caps:
                if start == 0 and end == 0:
                    whole.append((caption, tokens))
                    continue
                a, b = int(start * self.skel.fps), int(end * self.skel.fps)
                piece = motion[a:b]
                if self.skel.min_len <= len(piece) < 200:
                    self.items.append((f"{name}[{a}:{b}]", piece, [(caption, tokens)]))
                else:
                    skipped += 1
            if whole:
                self.items.append((name, motion, whole))
        if skipped:
            warnings.warn(f"{root} {split}: skipped {skipped} clips or captioned pieces outside "
                          f"{self.skel.min_len} <= frames < 200, as the HumanML3D loaders do", stacklevel=2)
        if not self.items:
            raise DataError(f"{os.path.join(root, split + '.txt')}: no usable clips in the split")

    def __len__(self):
        return len(self.items)

    def captions(self) -> list:
        return [c for _, _, caps in self.items for c, _ in caps]

    def normalize(self, x):
        return (x - self.mean) / self.std

    def denormalize(self, x):
        if isinstance(x, torch.Tensor):
            return x * torch.as_tensor(self.std, device=x.device) + torch.as_tensor(self.mean, device=x.device)
        return x * self.std + self.mean

    def __getitem__(self, i: int) -> dict:
        name, motion, caps = self.items[i]
        if self.deterministic:
            (caption, tokens), T = caps[0], len(motion) // UNIT_LENGTH * UNIT_LENGTH
            start = 0
        else:
            caption, tokens = caps[self.rng.integers(len(caps))]
            units = len(motion) // UNIT_LENGTH - (self.rng.random() < 1 / 3)  # 'single' / 'double'
            T = max(units, self.skel.min_len // UNIT_LENGTH) * UNIT_LENGTH
            start = int(self.rng.integers(0, len(motion) - T + 1))
        x = self.normalize(motion[start:start + min(T, MAX_LEN)])
        return {"motion": torch.from_numpy(x.astype(np.float32)), "length": len(x), "caption": caption,
                "tokens": tokens, "name": name}


def collate(batch: list) -> dict:
    """Pad to the longest item: motion (B, T, D), lengths (B,), mask (B, T) with True on real frames."""
    lengths = torch.tensor([b["length"] for b in batch])
    T, D = int(lengths.max()), batch[0]["motion"].shape[1]
    motion = torch.zeros(len(batch), T, D)
    for i, b in enumerate(batch):
        motion[i, :b["length"]] = b["motion"]
    return {"motion": motion, "lengths": lengths, "mask": torch.arange(T)[None] < lengths[:, None],
            "captions": [b["caption"] for b in batch], "tokens": [b["tokens"] for b in batch],
            "names": [b["name"] for b in batch]}


def loader(dataset, batch_size: int, shuffle: bool, seed: int = 0, drop_last: bool = False):
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=g,
                                       collate_fn=collate, drop_last=drop_last, num_workers=0)


def train_batches(dataset, batch_size: int, seed: int, start: int = 0, data_rng=None):
    """The endless training stream of every trainer here: a new shuffle at the first step of each epoch
    (seeded seed + that step), the last partial batch dropped. From step `start`, the stream an
    uninterrupted run would see there: the epoch's order re-made, its done batches skipped (their crops
    drawn and discarded), then the dataset's crop/caption RNG set to `data_rng`, the state saved with the
    checkpoint. -> a generator of batches, one per step."""
    step = start - start % (len(dataset) // batch_size)                 # the first step of start's epoch
    epoch = iter(loader(dataset, batch_size, shuffle=True, seed=seed + step, drop_last=True))
    for _ in range(start - step):
        next(epoch)
    if data_rng is not None:
        dataset.rng.bit_generator.state = data_rng
    step = start
    while True:
        for batch in epoch:
            yield batch
            step += 1
        epoch = iter(loader(dataset, batch_size, shuffle=True, seed=seed + step, drop_last=True))


def build_vocab(root: str) -> Vocab:
    """The vocabulary of a dataset: every word of its training captions, rebuilt deterministically."""
    captions = [c for name in read_split(root, "train") for c, _, _, _ in load_captions(root, name)]
    return Vocab.build(captions)


# -----------------------------------------------------------------------------
# `check`: validate a folder and summarise it.


def check(root: str) -> dict:
    """Load every split through the loader (which validates files, widths, values and captions)
    and return a summary. Raises DataError on the first problem."""
    mean, std = load_stats(root)
    skel = skeleton_for_dims(mean.shape[0])
    for sub in ("new_joint_vecs", "texts"):
        if not os.path.isdir(os.path.join(root, sub)):
            raise DataError(f"{os.path.join(root, sub)}: folder not found")
    summary = {"root": root, "dims": int(mean.shape[0]), "skeleton": skel.name, "splits": {}}
    lengths, n_caps, cap_words = [], 0, []
    names_all, seen = set(read_split(root, "all")), {}
    for split in ("train", "val", "test"):
        names = read_split(root, split)
        where = os.path.join(root, split + ".txt")
        missing = sorted(set(names) - names_all)
        if missing:
            raise DataError(f"{where}: {len(missing)} names not in all.txt, e.g. {missing[0]}")
        twice = sorted(n for n, k in Counter(names).items() if k > 1)
        if twice:
            raise DataError(f"{where}: {len(twice)} names listed twice, e.g. {twice[0]}")
        for other, others in seen.items():                # a clip in two splits: test read in training
            shared = sorted(set(names) & others)
            if shared:
                raise DataError(f"{where}: {len(shared)} names also in {other}.txt, e.g. {shared[0]}")
        seen[split] = set(names)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = MotionTextDataset(root, split)
        summary["splits"][split] = {"clips": len(names), "items": len(ds),
                                    "skipped": " ".join(str(w.message) for w in caught) or None}
        for _, motion, caps in ds.items:
            lengths.append(len(motion))
            n_caps += len(caps)
            cap_words += [len(words(c)) for c, _ in caps]
    hist, edges = np.histogram(np.array(lengths) / skel.fps, bins=np.arange(0, 11))
    summary.update(clips=len(names_all), items=sum(s["items"] for s in summary["splits"].values()),
                   captions=n_caps, words_per_caption=float(np.mean(cap_words)),
                   vocabulary=len(build_vocab(root)), length_s_histogram={f"{a:.0f}-{b:.0f}s": int(h)
                   for a, b, h in zip(edges[:-1], edges[1:], hist) if h},
                   mean_length_s=float(np.mean(lengths) / skel.fps))
    return summary


def check_same_dataset(root: str, path: str, own_mean: torch.Tensor, own_words=None, root_words=None,
                       hint: str = ""):
    """A generator, reward or evaluator carries its training folder's Mean and caption vocabulary; another
    Mean or, where given, another vocabulary (own_words against root_words, root's as the caller reads it:
    build_vocab(root).itos, or the evaluator's lemmas) means another dataset, whose features and captions the
    model would read wrongly without a word."""
    mean = load_stats(root)[0]
    own = own_mean.detach().cpu().numpy()
    if own.shape != mean.shape or not np.allclose(own, mean, rtol=1e-5, atol=1e-6):
        raise common.InputError(f"{path}: trained on another dataset than {root} (its Mean.npy differs){hint}")
    if own_words is not None and list(own_words) != list(root_words):
        raise common.InputError(f"{path}: trained on another dataset than {root} (its captions' vocabulary "
                                f"differs){hint}")


def check_scored(root: str, split: str, path: str, own_mean: torch.Tensor, own_words, lemmas: bool = False):
    """A model scored on root's split. root may be a held-out folder of its own (the README's 400 fresh motions,
    with the benchmark's statistics), so only the Mean must be root's (else refused, as check_same_dataset);
    the split's caption words the model never saw are read as <unk>, and a warning says how many.
    lemmas: the model reads the tokens' lemmas (the evaluator), not the caption's words."""
    check_same_dataset(root, path, own_mean)
    seen = {w for name in read_split(root, split) for caption, tokens, _, _ in load_captions(root, name)
            for w in ([lemma(t) for t in tokens] if lemmas else words(caption))}
    unknown = sorted(seen - set(own_words))
    if unknown:
        print(f"warning: {path}: {len(unknown)} of the {len(seen)} words in {root}'s {split} captions not in its "
              f"vocabulary (read as <unk>): {', '.join(unknown[:5])}{', ...' if len(unknown) > 5 else ''}")


# -----------------------------------------------------------------------------


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("synth", help="write the procedural HumanML3D-format benchmark")
    s.add_argument("--out", required=True)
    s.add_argument("--motions", type=int, default=1600, help="clips before mirroring (default 1600)")
    s.add_argument("--seed", type=int, default=0)
    c = sub.add_parser("check", help="validate a HumanML3D-format folder and print a summary")
    c.add_argument("--data", required=True)
    args = p.parse_args()
    if args.cmd == "synth":
        import synth
        if args.motions < 20:                                       # val holds 5%: one clip from 20 on
            raise common.InputError(f"--motions {args.motions}: need at least 20 clips, so that val (5%) holds one")
        common.check_ranges(args, seed=common.SEED)
        common.writable(args.out, "--out")
        synth.write_dataset(args.out, args.motions, args.seed)
    summary = check(args.out if args.cmd == "synth" else args.data)
    for k, v in summary.items():
        print(f"{k:>18}: {v}")


if __name__ == "__main__":
    common.cli(main)
