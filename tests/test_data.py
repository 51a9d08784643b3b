"""data.py and synth.py: the HumanML3D format against a real clip, the generator's geometry and
captions, the loader, and a clear error for every kind of bad input."""
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

import captions
import common
import data
import primitives
import synth

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- the format, checked against real HumanML3D data -------------------------------------------

def test_recover_from_ric_matches_real_sample(sample_dir):
    feats = np.load(os.path.join(sample_dir, "new_joint_vecs", "012314.npy"))
    joints = np.load(os.path.join(sample_dir, "new_joints", "012314.npy"))
    assert np.abs(data.recover_from_ric(feats, 22) - joints).max() < 1e-4
    batched = data.recover_from_ric(torch.from_numpy(feats)[None].repeat(2, 1, 1))   # torch, batched
    assert batched.shape == (2, 170, 22, 3)
    assert (batched[1].numpy() - joints).__abs__().max() < 1e-4


def test_features_from_joints_reproduces_real_features(sample_dir):
    """Our motion_representation, run on the real joints, gives back the real 263-d features. Only
    the end of the clip differs a little: the original had one more frame inside the heading's
    Gaussian filter (sigma 20 frames)."""
    feats = np.load(os.path.join(sample_dir, "new_joint_vecs", "012314.npy"))
    joints = np.load(os.path.join(sample_dir, "new_joints", "012314.npy"))
    ours, _ = data.features_from_joints(joints)
    assert ours.shape == (169, 263)
    assert np.abs(ours[:120] - feats[:120]).max() < 1e-3
    assert (ours[:, 259:] == feats[:-1, 259:]).all()                      # foot contacts identical


def test_real_statistics_are_group_averaged(sample_dir):
    std = np.load(os.path.join(sample_dir, "Std.npy"))
    for a, b in [(1, 3), (4, 67), (67, 193), (193, 259), (259, 263)]:
        assert np.allclose(std[a:b], std[a])
    fake = [np.random.default_rng(0).normal(size=(50, 263)) * np.arange(1, 264)]
    mean, ours = data.mean_std(fake, 22)
    assert np.allclose(ours[4:67], ours[4]) and not np.allclose(ours[4], ours[67])


def test_a_kit_ml_folder_runs_through_the_same_code_with_its_own_skeleton(kit_data):
    """KIT-ML (21 joints, 251 features, millimetres, 12.5 fps; no clip of it ships here, so kit_data maps the
    tiny benchmark onto its skeleton): the loader picks the skeleton by the feature count, recover_from_ric
    gives back the joints the features were made from (and their mirror's), and both backbones, the
    evaluator and the reward train on it as they do on HumanML3D."""
    import metrics
    import models
    import spl
    summary = data.check(kit_data)
    assert summary["dims"] == 251 and summary["skeleton"] == "kit"
    name = data.read_split(kit_data, "test")[0]
    joints = np.load(os.path.join(kit_data, "new_joints", f"{name}.npy"))                  # (T, 21, 3), mm
    assert np.abs(data.recover_from_ric(np.load(os.path.join(kit_data, "new_joint_vecs", f"{name}.npy"))) - joints
                  ).max() < 0.1                                                          # 0.1 mm
    feats, out = data.features_from_joints(data.mirror_joints(joints, data.KIT), data.KIT)
    assert feats.shape == (len(joints) - 1, 251) and np.abs(data.recover_from_ric(feats) - out).max() < 0.1
    assert 1000 < out[:, 4, 1].max() < 2500 and out[..., 1].min() > -1e-3             # the head's height, in mm

    torch.manual_seed(0)
    ds = data.MotionTextDataset(kit_data, "train")
    assert ds.skel is data.KIT and ds[0]["motion"].shape[1] == 251
    batch = data.collate([ds[i] for i in range(4)])
    vocab = data.build_vocab(kit_data)
    for backbone in ("mld", "mdm"):
        gen = models.build_model(models.ModelConfig(backbone=backbone, **models.PRESETS["tiny"][0]), vocab, 251)
        losses = [gen.diffusion_loss(batch)] + ([gen.vae_loss(batch)] if backbone == "mld" else [])
        for loss in losses:
            loss = loss[0] if isinstance(loss, tuple) else loss
            loss.backward()
            assert torch.isfinite(loss)
        assert gen.sample(["a person walks"], [24], steps=2).shape == (1, 24, 251)
    ev = metrics.Evaluator(metrics.EvaluatorConfig(), metrics.word_vocab(kit_data), 251)
    assert ev.embed_motion(ds.denormalize(batch["motion"]), batch["lengths"]).shape[0] == 4
    reward, _ = spl.build(spl.RewardConfig(data=kit_data, **spl.PRESETS["tiny"]), "cpu")
    assert reward.mean.shape == (251,)


# --- the generator ------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(6))
def test_synthetic_round_trip_and_ground_contact(seed):
    clip = synth.make_clip(np.random.default_rng(seed))
    for joints in (clip["joints"], data.mirror_joints(clip["joints"])):
        feats, out = data.features_from_joints(joints)
        assert feats.shape == (len(joints) - 1, 263) and np.isfinite(feats).all()
        assert np.abs(data.recover_from_ric(feats) - out).max() < 1e-4    # the generated joints come back
        foot = out[:, primitives.FOOT_JOINTS, 1].min(1)
        grounded = ~clip["airborne"][:-1]
        assert out[..., 1].min() > -1e-5                                  # nothing below the floor
        assert np.abs(foot[grounded]).max() < 1e-4                        # no floating when not jumping
        bones = np.linalg.norm(out[:, 1:] - out[:, data.HUMANML3D.parents[1:]], axis=-1)
        assert np.allclose(bones, bones[0], atol=1e-4)                    # rigid skeleton
        assert (out[:, 15, 1] > out[:, 0, 1]).all()                       # head above pelvis


def test_directions_follow_the_words():
    """A left side-step travels to +X (the body's left), a left turn is +90 degrees, and the mirror
    of each goes the other way: the attributes the benchmark asks a generator to get right."""
    rng = np.random.default_rng(0)
    style = primitives.sample_style(rng)

    def run(name, p):
        seg = primitives.BY_NAME[name].make(p, style, rng)
        E, yaw_rate, lift, push, _ = synth.compose([primitives.BY_NAME["stand"].make({}, style, rng, n=12), seg], 8)
        yaw = np.cumsum(yaw_rate)
        _, j = data.features_from_joints(synth.ground(synth.forward_kinematics(E, yaw), lift, push, yaw))
        return j

    left = run("walk", {"dir": "left", "speed": "normal"})
    assert left[-1, 0, 0] > 0.3
    assert data.mirror_joints(left)[-1, 0, 0] < -0.3
    turn = run("turn", {"side": "left", "angle": 90})
    heading = data.facing_yaw(turn)
    assert abs(np.degrees(heading[-1] - heading[0]) - 90) < 5
    heading_m = data.facing_yaw(data.mirror_joints(turn))
    assert abs(np.degrees(heading_m[-1] - heading_m[0]) + 90) < 5
    back = run("walk", {"dir": "backward", "speed": "normal"})
    assert back[-1, 0, 2] < -0.3


def test_captions_are_well_formed_and_mirrored():
    for seed in range(30):
        clip = synth.make_clip(np.random.default_rng(seed))
        whole = [ln for ln in clip["lines"] if ln.endswith("#0.0#0.0")]
        assert len(whole) >= 3 and len(set(whole)) == len(whole)
        for ln in clip["lines"]:
            caption, tokens, start, end = data.parse_caption_line(ln, "synth")
            assert len(tokens) == len(data.words(caption))                # one word/POS per word
            assert end == 0 or end - start >= 2.0
    assert data.mirror_text("waves the left hand, walks clockwise") == "waves the right hand, walks counterclockwise"


def test_every_phrase_word_has_a_tag():
    rng = np.random.default_rng(0)
    for prim in primitives.PRIMITIVES:
        for _ in range(50):
            for form in ("3sg", "ing", "base"):
                for phrase in prim.phrases(prim.sample(rng)):
                    captions.render(phrase, form, "their")                    # raises on an untagged word


def test_generation_is_deterministic(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    synth.write_dataset(a, 4, seed=7)
    synth.write_dataset(b, 4, seed=7)
    for name in ("000003", "M000001"):
        assert np.array_equal(np.load(f"{a}/new_joint_vecs/{name}.npy"), np.load(f"{b}/new_joint_vecs/{name}.npy"))
        assert open(f"{a}/texts/{name}.txt").read() == open(f"{b}/texts/{name}.txt").read()
    c = str(tmp_path / "c")
    synth.write_dataset(c, 4, seed=8)
    assert not np.array_equal(np.load(f"{a}/new_joint_vecs/000003.npy"), np.load(f"{c}/new_joint_vecs/000003.npy"))


# --- the loader --------------------------------------------------------------------------------

def test_loader_items_and_batches(tiny_data):
    ds = data.MotionTextDataset(tiny_data, "train", seed=0)
    assert len(ds) >= 30
    item = ds[0]
    assert item["length"] % 4 == 0 and data.skeleton_for_dims(263).min_len <= item["length"] <= data.MAX_LEN
    batch = data.collate([ds[i] for i in range(5)])
    T = int(batch["lengths"].max())
    assert batch["motion"].shape == (5, T, 263)
    assert batch["mask"].sum(1).tolist() == batch["lengths"].tolist()
    assert (batch["motion"][~batch["mask"]] == 0).all()
    raw = np.concatenate([m for _, m, _ in ds.items])
    z = ds.normalize(raw)
    mean, std = np.load(os.path.join(tiny_data, "Mean.npy")), np.load(os.path.join(tiny_data, "Std.npy"))
    assert np.allclose(z, (raw - mean) / std, atol=1e-5)                   # normalised with the folder's Mean/Std
    assert np.allclose(ds.denormalize(z), raw, atol=1e-4)


def _line(text, start=0.0, end=0.0):
    """One HumanML3D caption line, 'caption#word/POS ...#start#end' (0.0#0.0: the whole clip)."""
    return f"{text}#" + " ".join(f"{w}/NOUN" for w in text.split()) + f"#{start}#{end}"


def _write_folder(root, clips, seed=0):
    """A small HumanML3D-format folder from scratch: random 263-d features of the given lengths (far from
    zero mean / unit std, so normalising shows), Mean.npy/Std.npy, texts, and train.txt = all.txt.
    clips: {name: (frames, [caption lines])} -> root."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "new_joint_vecs"))
    os.makedirs(os.path.join(root, "texts"))
    np.save(os.path.join(root, "Mean.npy"), rng.normal(2.0, 1.0, 263).astype(np.float32))
    np.save(os.path.join(root, "Std.npy"), rng.uniform(0.5, 3.0, 263).astype(np.float32))
    for name, (frames, lines) in clips.items():
        np.save(os.path.join(root, "new_joint_vecs", f"{name}.npy"),
                rng.normal(2.0, 3.0, (frames, 263)).astype(np.float32))
        with open(os.path.join(root, "texts", f"{name}.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
    for split in ("train", "all"):
        with open(os.path.join(root, f"{split}.txt"), "w") as f:
            f.write("\n".join(clips) + "\n")
    return str(root)


def _normalised(root, name):
    """(raw - Mean) / Std of one clip, read with numpy alone."""
    raw = np.load(os.path.join(root, "new_joint_vecs", f"{name}.npy"))
    return (raw - np.load(os.path.join(root, "Mean.npy"))) / np.load(os.path.join(root, "Std.npy"))


def _by_caption(ds):
    return {item["caption"]: item for item in (ds[i] for i in range(len(ds)))}


def test_deterministic_item_is_the_whole_normalised_clip_floored_to_4_frames(tmp_path):
    """deterministic=True: the first caption and (raw[:T] - Mean) / Std with T = len // 4 * 4 (T2M's
    unit_length 4; a 199-frame clip gives 196 = max_motion_length)."""
    root = _write_folder(tmp_path / "d", {"000001": (150, [_line("a person walks"), _line("someone walks")]),
                                          "000002": (41, [_line("a person jumps"), _line("someone jumps")]),
                                          "000003": (199, [_line("a person sits"), _line("someone sits")])})
    ds = data.MotionTextDataset(root, "train", deterministic=True)
    assert len(ds) == 3
    expected = {"000001": (148, "a person walks"), "000002": (40, "a person jumps"), "000003": (196, "a person sits")}
    for i in range(3):
        item = ds[i]
        T, caption = expected[item["name"]]
        assert item["length"] == T and item["motion"].shape == (T, 263) and item["caption"] == caption
        assert np.allclose(item["motion"].numpy(), _normalised(root, item["name"])[:T], atol=1e-5)


def test_random_item_is_a_contiguous_window_of_the_normalised_clip(tmp_path):
    """deterministic=False (T2M's training crop): length floored to 4 frames, one unit shorter one time in
    three but never under 40, taken as a window z[s:s+L] of the normalised clip at a random start s."""
    root = _write_folder(tmp_path / "d", {"000001": (150, [_line("a person walks"), _line("someone walks")]),
                                          "000002": (41, [_line("a person jumps")])})
    ds = data.MotionTextDataset(root, "train", seed=0)
    allowed = {"000001": {148, 144}, "000002": {40}}
    for i in range(2):
        name = ds[i]["name"]
        z = _normalised(root, name)
        lengths, starts = set(), set()
        for _ in range(30):
            item = ds[i]
            x, L = item["motion"].numpy(), item["length"]
            assert x.shape == (L, 263) and L in allowed[name]
            s = [s for s in range(len(z) - L + 1) if np.allclose(x, z[s:s + L], atol=1e-5)]
            assert s, f"{name}: a {L}-frame item is no window of the normalised clip"
            lengths.add(L), starts.add(s[0])
        assert lengths == allowed[name]                                   # both lengths happen
        if name == "000001":
            assert len(starts) > 1                                        # the start is drawn


def test_span_captions_become_their_own_items(tmp_path):
    """A caption 'text#tokens#start#end' (not 0#0) is its own item motion[int(start*20):int(end*20)] if
    40 <= len < 200 (HumanML3D, 20 fps): 1.03..3.49 s -> frames 20:69 (floored to 48), 2.0..4.0 s ->
    40:80 (kept at exactly 40), 1.0..2.95 s -> 20:59 (39 frames: skipped and counted)."""
    root = _write_folder(tmp_path / "d", {"000001": (150, [
        _line("a person walks"), _line("a person waves", 1.03, 3.49), _line("a person bows", 2.0, 4.0),
        _line("a person kicks", 1.0, 2.95)])})
    with pytest.warns(UserWarning, match=r"skipped 1 clips"):
        ds = data.MotionTextDataset(root, "train", deterministic=True)
    items, z = _by_caption(ds), _normalised(root, "000001")
    assert sorted(items) == ["a person bows", "a person walks", "a person waves"]
    for caption, window in (("a person walks", z[0:148]), ("a person waves", z[20:68]), ("a person bows", z[40:80])):
        assert items[caption]["motion"].shape == window.shape, caption
        assert np.allclose(items[caption]["motion"].numpy(), window, atol=1e-5), caption


def test_clips_outside_40_to_200_frames_are_skipped_with_their_span_captions(tmp_path):
    """T2M's loader drops a clip with T < 40 or T >= 200 before reading its captions: its span captions
    go too, even a span that alone would fit (counted once per clip in the warning)."""
    root = _write_folder(tmp_path / "d", {
        "000001": (39, [_line("a person hops")]),
        "000002": (40, [_line("a person bows")]),
        "000003": (199, [_line("a person sits")]),
        "000004": (200, [_line("a person runs"), _line("a person stops", 1.0, 4.0)]),
        "000005": (240, [_line("a person dances"), _line("a person spins", 1.0, 5.0)])})
    with pytest.warns(UserWarning, match=r"skipped 3 clips"):
        ds = data.MotionTextDataset(root, "train", deterministic=True)
    assert sorted(_by_caption(ds)) == ["a person bows", "a person sits"]


def test_nan_span_reads_as_zero(tmp_path):
    """HumanML3D has 'nan' start/end; T2M's loader reads NaN as 0.0: nan#nan is a whole-clip caption and
    nan#2.5 is the span 0.0..2.5 s -> frames 0:50 (floored to 48)."""
    line = _line("a person walks", "nan", "nan")
    assert data.parse_caption_line(line, "t")[2:] == (0.0, 0.0)
    root = _write_folder(tmp_path / "d", {"000001": (150, [line, _line("a person waves", "nan", 2.5)])})
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                    # nothing skipped
        ds = data.MotionTextDataset(root, "train", deterministic=True)
    items, z = _by_caption(ds), _normalised(root, "000001")
    assert sorted(items) == ["a person walks", "a person waves"]
    assert np.allclose(items["a person walks"]["motion"].numpy(), z[:148], atol=1e-5)
    assert np.allclose(items["a person waves"]["motion"].numpy(), z[0:48], atol=1e-5)


def test_span_ending_before_it_starts_is_an_empty_piece_skipped(tmp_path):
    """end < start (3.0..1.0 s) cuts motion[60:20], an empty piece: skipped and counted in the warning, as
    T2M's loader does, not an error; the clip's whole-clip caption stays."""
    root = _write_folder(tmp_path / "d", {"000001": (150, [_line("a person walks"),
                                                           _line("a person waves", 3.0, 1.0)])})
    with pytest.warns(UserWarning, match=r"skipped 1 clips"):
        ds = data.MotionTextDataset(root, "train", deterministic=True)
    assert sorted(_by_caption(ds)) == ["a person walks"]


def test_vocab_is_deterministic_and_maps_unknown_words(tiny_data):
    v1, v2 = data.build_vocab(tiny_data), data.build_vocab(tiny_data)
    assert v1.itos == v2.itos and v1.itos[:3] == ["<pad>", "<unk>", "<cls>"]
    ids = v1.encode("a person zorbles left")
    assert ids[2] == 1 and ids[3] == v1.stoi["left"]
    tokens, pad = v1.batch(["a person walks", "a person"])
    assert tokens[:, 0].tolist() == [2, 2] and pad.tolist()[1][-1]


def test_check_summarises(tiny_data):
    s = data.check(tiny_data)
    assert s["clips"] == 160 and s["dims"] == 263 and s["vocabulary"] > 30


# --- bad input -----------------------------------------------------------------------------------

def _copy(src, dst):
    shutil.copytree(src, dst)
    return str(dst)


def test_bad_inputs_name_the_file(tiny_data, tmp_path):
    with pytest.raises(data.DataError, match="dataset folder not found"):
        data.MotionTextDataset(str(tmp_path / "nope"))
    d = _copy(tiny_data, tmp_path / "d")
    name = data.read_split(d, "train")[0]
    clip = os.path.join(d, "new_joint_vecs", f"{name}.npy")

    np.save(clip, np.zeros((60, 200), np.float32))                        # wrong feature width
    with pytest.raises(data.DataError, match=rf"{name}\.npy: expected \(frames, 263\)"):
        data.MotionTextDataset(d, "train")
    x = np.zeros((60, 263), np.float32)
    x[17, 5] = np.nan                                                     # NaN in a clip
    np.save(clip, x)
    with pytest.raises(data.DataError, match=rf"{name}\.npy: NaN or Inf at frame 17"):
        data.MotionTextDataset(d, "train")
    np.save(clip, np.zeros((60, 263), np.float32))

    txt = os.path.join(d, "texts", f"{name}.txt")
    good = open(txt, "rb").read()
    with open(txt, "ab") as f:
        f.write(b"a person walks \xff#a/DET person/NOUN#0.0#0.0\n")        # not UTF-8
    with pytest.raises(data.DataError, match=rf"{name}\.txt: not UTF-8 text"):
        data.MotionTextDataset(d, "train")
    with open(txt, "wb") as f:
        f.write(good + b"a person walks#a/DET person/NOUN\n")              # malformed caption line
    with pytest.raises(data.DataError, match=rf"{name}\.txt:\d+: malformed caption line"):
        data.MotionTextDataset(d, "train")

    open(os.path.join(d, "val.txt"), "w").close()                        # empty split
    with pytest.raises(data.DataError, match=r"val\.txt: split is empty"):
        data.MotionTextDataset(d, "val")
    with open(os.path.join(d, "Std.npy"), "w") as f:
        f.write("garbage")                                                # not a .npy
    with pytest.raises(data.DataError, match=r"Std\.npy: cannot read"):
        data.MotionTextDataset(d, "test")
    os.remove(os.path.join(d, "Std.npy"))
    with pytest.raises(data.DataError, match=r"Std\.npy: normalisation statistics not found"):
        data.MotionTextDataset(d, "test")
    open(tmp_path / "empty.pt", "w").close()
    with pytest.raises(common.CheckpointError, match=r"empty\.pt: corrupt or truncated checkpoint"):
        common.load_checkpoint(str(tmp_path / "empty.pt"))
    (tmp_path / "noise.pt").write_bytes(bytes(range(7, 107)))                 # not a pickle: torch's own reason,
    with pytest.raises(common.CheckpointError, match=r"noise\.pt: corrupt or truncated checkpoint \(UnpicklingError: "
                                                      r"Unsupported operand"):   # not its weights_only preamble
        common.load_checkpoint(str(tmp_path / "noise.pt"))
    with pytest.raises(data.DataError, match=r"nowhere: dataset folder not found$"):
        data.check(str(tmp_path / "nowhere"))                          # not as its missing Mean.npy
    for name in ("gpu", "cpu:1", "meta"):                  # cpu:1 would run on cpu; meta computes nothing
        with pytest.raises(common.InputError, match=f"--device '{name}': auto, cpu, cuda or cuda:N"):
            common.pick_device(name)
    assert common.pick_device("cpu:0") == torch.device("cpu:0")
    with pytest.raises(common.InputError, match="'': no words"):       # <cls> alone: no model was trained on it
        data.check_text("")
    with pytest.raises(common.InputError, match="--prompt '12 !': no words"):
        data.check_text("12 !", "--prompt")
    assert data.check_text("a person walks") == "a person walks"


def test_a_cuda_device_must_exist(monkeypatch):
    """On a machine with one GPU, cuda:1 is refused before any work rather than failing at the first tensor."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert common.pick_device("cuda") == torch.device("cuda")
    assert common.pick_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(common.InputError, match="--device cuda:1: this machine has 1 CUDA device"):
        common.pick_device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(common.InputError, match="--device cuda: CUDA is not available"):
        common.pick_device("cuda")


def test_synth_writes_all_or_nothing(tmp_path, monkeypatch):
    """A non-empty --out is refused before anything is written; a run killed half-way leaves no dataset."""
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("keep")
    with pytest.raises(common.InputError, match="full: exists and is not an empty folder"):
        synth.write_dataset(str(tmp_path / "full"), 4, seed=0)
    assert os.listdir(tmp_path / "full") == ["mine.txt"]
    real, calls = synth.make_clip, []

    def dies_on_the_third(rng):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(rng)
    monkeypatch.setattr(synth, "make_clip", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        synth.write_dataset(str(tmp_path / "new"), 4, seed=0)
    assert not (tmp_path / "new").exists()
    synth.write_dataset(str(tmp_path / "new"), 4, seed=0)                 # the killed run's new.partial: replaced
    assert not (tmp_path / "new.partial").exists() and len(os.listdir(tmp_path / "new" / "texts")) == 8
    (tmp_path / "mine.partial").mkdir()                                    # a folder synth did not leave: kept
    (tmp_path / "mine.partial" / "notes.txt").write_text("keep")
    with pytest.raises(common.InputError, match="mine.partial: exists and holds what synth does not write"):
        synth.write_dataset(str(tmp_path / "mine"), 4, seed=0)
    assert os.listdir(tmp_path / "mine.partial") == ["notes.txt"] and not (tmp_path / "mine").exists()


def test_short_clips_are_skipped_with_one_warning(tiny_data, tmp_path):
    d = _copy(tiny_data, tmp_path / "d")
    for name in data.read_split(d, "test")[:3]:
        np.save(os.path.join(d, "new_joint_vecs", f"{name}.npy"), np.zeros((30, 263), np.float32))
    with pytest.warns(UserWarning, match=r"skipped [3-9] clips"):
        data.MotionTextDataset(d, "test")


def test_check_refuses_splits_that_share_clips_captions_without_tokens_and_zips_named_npy(tiny_data, tmp_path):
    """A test clip also in train (HumanML3D's own train_val.txt had 3,766 such), a name listed twice, a caption
    line whose word/POS field is empty (the evaluator reads those, not the caption) and an .npz or a checkpoint
    under a .npy name: each refused by `data.py check`, naming the file."""
    d = tmp_path / "d"
    shutil.copytree(tiny_data, d)
    train, test = (d / "train.txt").read_text(), (d / "test.txt").read_text()
    (d / "train.txt").write_text(train + test)
    with pytest.raises(data.DataError, match=r"test\.txt: 24 names also in train\.txt"):
        data.check(str(d))
    (d / "train.txt").write_text(train + train.splitlines()[0] + "\n")
    with pytest.raises(data.DataError, match=r"train\.txt: 1 names listed twice"):
        data.check(str(d))
    (d / "train.txt").write_text(train)
    with pytest.raises(data.DataError, match=r"x\.txt:1: no word/POS tokens"):
        data.parse_caption_line("a person walks.##0.0#0.0", "x.txt:1")
    name = data.read_split(str(d), "val")[0]
    clip = d / "new_joint_vecs" / f"{name}.npy"
    np.savez(clip.with_suffix(".npz"), x=np.load(clip))
    (d / "new_joint_vecs" / f"{name}.npz").rename(clip)
    with pytest.raises(data.DataError, match=rf"{name}\.npy: a zip archive \(an \.npz or a \.pt\?\), not a \.npy"):
        data.check(str(d))


def test_cli_errors_exit_2(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "data.py"), "check", "--data", str(tmp_path / "nope")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "error:" in r.stderr and "nope" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, os.path.join(ROOT, "data.py"), "synth", "--out", str(tmp_path / "x"),
                        "--motions", "3"], capture_output=True, text=True)
    assert r.returncode == 2 and "--motions 3" in r.stderr
    r = subprocess.run([sys.executable, os.path.join(ROOT, "data.py"), "synth", "--out", str(tmp_path / "x"),
                        "--seed", "-1"], capture_output=True, text=True)
    assert r.returncode == 2 and "--seed -1: must be in 0..2147483647" in r.stderr and not (tmp_path / "x").exists()


def test_caption_lines_round_trip_and_verbs_inflect_by_rule():
    words = captions.words_of("a person") + captions.render(("sit", "down and <stand> up"), "3sg", "their") + [","] \
        + captions.words_of("then") + captions.render(("wave", "the left hand"), "3sg", "their")
    line = data.format_caption_line(words, 1.5, 3.0)
    assert line == ("a person sits down and stands up, then waves the left hand.#a/DET person/NOUN sit/VERB down/ADV "
                    "and/CCONJ stand/VERB up/ADV then/ADV wave/VERB the/DET left/ADJ hand/NOUN#1.5#3.0")
    caption, tokens, start, end = data.parse_caption_line(line, "test")
    assert (caption, start, end) == (line.split("#")[0], 1.5, 3.0)
    assert tokens == [f"{w[1]}/{w[2]}" for w in words if not isinstance(w, str)]
    assert [captions.VERBS[v] for v in ("run", "squat", "wave", "punch", "wait", "do")] == [
        ("runs", "running"), ("squats", "squatting"), ("waves", "waving"), ("punches", "punching"),
        ("waits", "waiting"), ("does", "doing")]


def test_primitives_lists_each_primitive_with_its_phrases():
    r = subprocess.run([sys.executable, os.path.join(ROOT, "primitives.py"), "--seed", "1"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert [ln.split()[0] for ln in r.stdout.splitlines() if not ln.startswith(" ")] == [p.name for p in primitives.PRIMITIVES]


def test_synth_show_prints_the_written_clips(tiny_data):
    """`python synth.py --show 2 --seed 0` prints clip i exactly as write_dataset wrote it (clip i depends
    only on the seed and i)."""
    r = subprocess.run([sys.executable, os.path.join(ROOT, "synth.py"), "--show", "2", "--seed", "0"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for i in range(2):
        with open(os.path.join(tiny_data, "texts", f"{i:06d}.txt")) as f:
            for line in f.read().split("\n"):
                assert not line or f"    {line}\n" in r.stdout
