"""
viz.py -- stick figures for HumanML3D-format joints: PNG filmstrips and side-by-side GIFs.

matplotlib is an optional dependency (pip install matplotlib); it is imported only here, inside the
functions, with the 3-D axes made by fig.add_subplot(projection="3d") (the old `Axes3D(fig)` idiom
of the motion repositories draws blank frames on matplotlib >= 3.6). GIFs use Pillow, no ffmpeg.

Run:  python viz.py --data data/synth --name 000001 --out clip.gif     (a dataset clip)
      python viz.py --joints motion.npy --out motion.png                (a file from models.py sample)
"""
from __future__ import annotations

import argparse
import os

import numpy as np

import common
import data

COLORS = ["#d62728", "#1f77b4", "#222222", "#d62728", "#1f77b4"]  # right leg, left leg, spine, arms


def _plt():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise common.InputError("pictures need matplotlib, an optional extra: pip install matplotlib") from None
    return plt


def to_plot(p):
    """HumanML3D (x, y up, z forward) -> matplotlib (x, -z, y), z up. A rotation, not a reflection:
    plotting (x, z, y) would swap the body's left and right. (..., 3) -> three (...,) arrays."""
    return p[..., 0], -p[..., 2], p[..., 1]


def _draw(ax, joints, t, skel, radius=1.5):
    """One frame of (T, J, 3) joints, the camera following the root; the path drawn on the floor."""
    ax.cla()
    rx, ry, _ = to_plot(joints[t, 0])
    ax.set_xlim(rx - radius, rx + radius)
    ax.set_ylim(ry - radius, ry + radius)
    ax.set_zlim(0, 2 * radius)
    px, py, _ = to_plot(joints[:, 0])
    ax.plot(px, py, 0 * px, color="#999999", lw=1)
    for chain, c in zip(skel.chains, COLORS):
        ax.plot(*to_plot(joints[t, list(chain)]), color=c, lw=3)
    ax.view_init(elev=15, azim=-70)                         # the camera in front of a figure facing +z
    ax.set_axis_off()


def filmstrip(joints, path, title="", frames=8, skel=data.HUMANML3D):
    """`frames` evenly spaced poses of one clip in a row, saved as a PNG."""
    plt = _plt()
    joints = np.asarray(joints) * skel.metres                  # KIT-ML's millimetres -> metres
    fig = plt.figure(figsize=(2.2 * frames, 2.8))
    for k, t in enumerate(np.linspace(0, len(joints) - 1, frames).astype(int)):
        ax = fig.add_subplot(1, frames, k + 1, projection="3d")
        _draw(ax, joints, t, skel)
        ax.set_title(f"{t / skel.fps:.1f}s", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=70, bbox_inches="tight")
    plt.close(fig)


def animate(clips, titles, path, skel=data.HUMANML3D, fps=None, stride=2):
    """Side-by-side animation of several (T, J, 3) clips (e.g. base vs tuned) as a GIF."""
    plt = _plt()
    from matplotlib.animation import FuncAnimation, PillowWriter
    clips = [np.asarray(c) * skel.metres for c in clips]       # KIT-ML's millimetres -> metres
    T = max(len(c) for c in clips)
    fig = plt.figure(figsize=(3 * len(clips), 3.2))
    axes = [fig.add_subplot(1, len(clips), i + 1, projection="3d") for i in range(len(clips))]

    def update(t):
        for ax, c, title in zip(axes, clips, titles):
            _draw(ax, c, min(t, len(c) - 1), skel)
            ax.set_title(title, fontsize=8)
        return []

    anim = FuncAnimation(fig, update, frames=range(0, T, stride))
    anim.save(path, writer=PillowWriter(fps=(fps or skel.fps) / stride))
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(description="Draw a clip as a filmstrip (.png) or an animation (.gif).")
    p.add_argument("--data", help="HumanML3D-format folder (with --name)")
    p.add_argument("--name", help="clip name in that folder, e.g. 000001")
    p.add_argument("--joints", help="a (T, J, 3) joints .npy (e.g. written by models.py sample)")
    p.add_argument("--out", required=True, help="output .png or .gif")
    a = p.parse_args()
    common.output_path(a.out, "--out", (".png", ".gif"))
    if a.joints:
        path, title = a.joints, os.path.basename(a.joints)
    elif a.data and a.name:
        path, title = os.path.join(a.data, "new_joints", f"{a.name}.npy"), a.name
        if not os.path.isfile(path):                          # before its captions: the clip itself is missing
            raise common.InputError(f"--name {a.name}: no clip {path}")
        lines = data.load_captions(a.data, a.name)
        title = f"{a.name}: {lines[0][0]}"
    else:
        raise common.InputError("give --joints FILE, or --data DIR with --name CLIP")
    if not os.path.isfile(path):
        raise common.InputError(f"{path}: joints file not found")
    joints = data.read_npy(path)
    if joints.ndim == 4 and len(joints):                          # a batch of clips: the first
        joints = joints[0]
    if (joints.dtype.kind not in "fiu" or joints.ndim != 3 or joints.shape[-1] != 3 or joints.shape[1] not in (22, 21)
            or not len(joints)):
        raise common.InputError(f"{path}: expected numbers shaped (frames, 22 or 21 joints, 3) (HumanML3D or KIT-ML), "
                                f"got {joints.dtype} {joints.shape}")
    if not np.isfinite(joints).all():
        raise common.InputError(f"{path}: contains NaN or Inf")
    skel = data.HUMANML3D if joints.shape[1] == 22 else data.KIT
    if a.out.endswith(".gif"):
        animate([joints], [title], a.out, skel)
    else:
        filmstrip(joints, a.out, title, skel=skel)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    common.cli(main)
