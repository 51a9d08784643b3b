"""Shared fixtures: the repository on sys.path, the real HumanML3D sample when present, a tiny
synthetic dataset written once per test session (a few seconds on a 2-core CPU), and crash_on, which
stops a run by hand at a chosen call (the resume tests)."""
import os
import sys

import pytest

# The suite is CPU-only and deterministic: on a CUDA machine every config left at device "auto" would
# pick the GPU (whose kernels are not bit-reproducible, and one test reads tensors back with .numpy()).
# Hidden before torch starts CUDA, so the suite runs the same on a GPU machine as on CI.
os.environ["CUDA_VISIBLE_DEVICES"] = ""

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import synth  # noqa: E402


def _sample_dir():
    for cand in (os.environ.get("HUMANML3D_SAMPLE", ""), os.path.join(ROOT, "..", "shared", "humanml3d_sample")):
        if cand and os.path.isdir(os.path.join(cand, "new_joint_vecs")):
            return cand
    return None


@pytest.fixture(scope="session")
def sample_dir():
    """One real HumanML3D clip (../shared/humanml3d_sample, or $HUMANML3D_SAMPLE); never copied here."""
    d = _sample_dir()
    if d is None:
        pytest.skip("the real HumanML3D sample is not available (set HUMANML3D_SAMPLE)")
    return d


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """80 synthetic clips + mirrors in HumanML3D's layout: train 136, val 8, test 24 items (one R-Precision
    group, smaller than 32)."""
    out = str(tmp_path_factory.mktemp("synth"))
    synth.write_dataset(out, 80, seed=0)
    return out


# KIT-ML joint k <- HumanML3D joint (or the mean of two): 11-15 right leg (hip, knee, ankle, mid-foot, toe),
# 16-20 left leg, 0-4 root to head, 5-7 right arm, 8-10 left arm (data.KIT's chains and facing joints).
T2M_OF_KIT = [0, 3, 6, 12, 15, 17, 19, 21, 16, 18, 20, 2, 5, 8, (8, 11), 11, 1, 4, 7, (7, 10), 10]


@pytest.fixture(scope="session")
def kit_data(tiny_data, tmp_path_factory):
    """The tiny dataset in KIT-ML's format: its joints mapped onto KIT's 21-joint skeleton, in millimetres,
    the 251-d features and Mean/Std made by data.py as HumanML3D's scripts make them (no KIT clip ships here)."""
    import shutil

    import numpy as np

    import data
    out = str(tmp_path_factory.mktemp("kit"))
    for d in ("new_joint_vecs", "new_joints"):
        os.makedirs(os.path.join(out, d))
    shutil.copytree(os.path.join(tiny_data, "texts"), os.path.join(out, "texts"))
    for f in ("train.txt", "val.txt", "test.txt", "all.txt"):
        shutil.copy(os.path.join(tiny_data, f), os.path.join(out, f))
    train = set(data.read_split(tiny_data, "train"))
    feats = {}
    for name in data.read_split(tiny_data, "all"):
        j = np.load(os.path.join(tiny_data, "new_joints", f"{name}.npy"))
        kit = np.stack([j[:, k] if isinstance(k, int) else j[:, list(k)].mean(1) for k in T2M_OF_KIT], 1) * 1000
        feats[name], joints = data.features_from_joints(kit, data.KIT)
        np.save(os.path.join(out, "new_joint_vecs", f"{name}.npy"), feats[name])
        np.save(os.path.join(out, "new_joints", f"{name}.npy"), joints)
    mean, std = data.mean_std([f for n, f in feats.items() if n in train], data.KIT.joints)
    np.save(os.path.join(out, "Mean.npy"), mean), np.save(os.path.join(out, "Std.npy"), std)
    return out


@pytest.fixture(scope="session")
def build_tiny(tiny_data):
    """Untrained tiny generator and reward on the tiny dataset's vocabulary (fast; for the maths tests)."""
    import torch

    import data
    import models
    import spl

    def build(backbone="mdm", seed=0):
        torch.manual_seed(seed)
        vocab = data.build_vocab(tiny_data)
        gen = models.build_model(models.ModelConfig(backbone=backbone, **models.PRESETS["tiny"][0]), vocab).eval()
        reward, train_set = spl.build(spl.RewardConfig(data=tiny_data, **spl.PRESETS["tiny"]), "cpu")
        gen.mean, gen.std = torch.tensor(train_set.mean), torch.tensor(train_set.std)
        return gen, reward.eval().requires_grad_(False)
    return build


@pytest.fixture()
def crash_on():
    """(fn, n) -> fn, except that its n-th call raises KeyboardInterrupt: a run stopped by hand mid-way."""
    def make(fn, n):
        calls = {"n": 0}

        def wrapped(*a, **k):
            calls["n"] += 1
            if calls["n"] == n:
                raise KeyboardInterrupt
            return fn(*a, **k)
        return wrapped
    return make
