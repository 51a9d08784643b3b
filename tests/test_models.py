"""models.py: the sampler against closed forms, LoRA, tiny pretraining, checkpoints and their errors."""
import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import common
import data
import models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def alpha_bar_np(kind):
    """An independent numpy computation of the schedules' cumulative alphas."""
    if kind == "scaled_linear":
        betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2
    else:
        f = lambda t: np.cos((t / 1000 + 0.008) / 1.008 * np.pi / 2) ** 2  # noqa: E731
        betas = np.minimum(1 - f(np.arange(1, 1001)) / f(np.arange(1000)), 0.999)
    return np.cumprod(1 - betas)


def test_schedules_match_published_values():
    s = models.DDIMScheduler("scaled_linear")
    assert abs(s.alpha_bar[0].item() - 0.99915) < 1e-5                  # MLD, motion.md
    assert abs(s.alpha_bar[999].item() - 0.00466) < 1e-5
    assert np.allclose(models.DDIMScheduler("cosine").alpha_bar.numpy(), alpha_bar_np("cosine"), atol=1e-6)
    s.set_timesteps(50)
    assert s.timesteps[:3].tolist() == [981, 961, 941] and s.timesteps[-1].item() == 1
    with pytest.raises(common.InputError, match=r"steps=1000: must be in 1\.\.999"):   # 1000..1: no timestep 1000
        s.set_timesteps(1000)


def ddim_step_np(ab, t, ab_prev, x_t, out, pred, eta, z):
    """DDIM (Song et al. 2021, Eqs. 12 and 16) in float64 numpy, written from the paper:
    x_{t-1} = sqrt(ab_prev) x0 + sqrt(1 - ab_prev - sigma^2) eps + sigma z,
    sigma = eta sqrt((1 - ab_prev) / (1 - ab_t)) sqrt(1 - ab_t / ab_prev). -> (x_{t-1}, x0)."""
    a = ab[t]
    if pred == "epsilon":
        x0, eps = (x_t - np.sqrt(1 - a) * out) / np.sqrt(a), out
    else:
        x0, eps = out, (x_t - np.sqrt(a) * out) / np.sqrt(1 - a)
    sigma = eta * np.sqrt((1 - ab_prev) / (1 - a)) * np.sqrt(1 - a / ab_prev)
    return np.sqrt(ab_prev) * x0 + np.sqrt(1 - ab_prev - sigma ** 2) * eps + sigma * z, x0


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("kind,pred", [("scaled_linear", "epsilon"), ("cosine", "sample")])
def test_ddim_step_is_the_closed_form(kind, pred, eta):
    """One DDIM step (x_{t-1} and x0_hat) equals the paper's formula for eps- and x0-prediction, eta in
    {0, 0.5, 1}, the noise z given explicitly, on the 50-step grid 981..1: previous index t - 20, and
    at the last step (t = 1) alpha_bar_prev = alpha_bar[0] (diffusers' set_alpha_to_one=False, MLD's
    config). Scalar t and a batch of per-sample t must both agree."""
    ab = alpha_bar_np(kind).astype(np.float32).astype(np.float64)      # float32 like diffusers' alphas_cumprod
    s = models.DDIMScheduler(kind, pred)
    s.set_timesteps(50)
    g = torch.Generator().manual_seed(0)
    ts = [981, 481, 21, 1]                                                # 21 -> 1, and the last step 1 -> final
    x_t, out, z = (torch.randn(len(ts), 5, generator=g) for _ in range(3))
    xt, o, zz = (v.double().numpy() for v in (x_t, out, z))
    refs = [ddim_step_np(ab, t, ab[t - 20] if t >= 20 else ab[0], xt[i], o[i], pred, eta, zz[i])
            for i, t in enumerate(ts)]
    for i, t in enumerate(ts):
        x_prev, x0 = s.step(out[i:i + 1], t, x_t[i:i + 1], eta=eta, noise=z[i:i + 1])
        assert np.allclose(x0[0].numpy(), refs[i][1], rtol=1e-4, atol=1e-4), t
        assert np.allclose(x_prev[0].numpy(), refs[i][0], rtol=1e-4, atol=1e-4), t
    x_prev, x0 = s.step(out, torch.tensor(ts), x_t, eta=eta, noise=z)       # per-sample timesteps
    assert np.allclose(x0.numpy(), np.stack([r[1] for r in refs]), rtol=1e-4, atol=1e-4)
    assert np.allclose(x_prev.numpy(), np.stack([r[0] for r in refs]), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("set_alpha_to_one", [False, True])
def test_last_ddim_step_uses_the_final_alpha_bar(set_alpha_to_one):
    """diffusers' convention: at the last step (t = 1, t - 20 < 0) alpha_bar_prev is final_alpha_cumprod
    = alpha_bar[0] (MLD's set_alpha_to_one=False, the default here), or 1 with set_alpha_to_one=True,
    where the eta = 0 step returns x0_hat itself. Checked against numpy, for the default constructor,
    the MLD model's own scheduler, and the flag."""
    ab = alpha_bar_np("scaled_linear")
    kw = {"set_alpha_to_one": True} if set_alpha_to_one else {}
    scheds = [models.DDIMScheduler("scaled_linear", "epsilon", **kw)]
    if not set_alpha_to_one:
        vocab = data.Vocab(["<pad>", "<unk>", "<cls>"])
        scheds.append(models.build_model(models.ModelConfig(backbone="mld", **models.PRESETS["tiny"][0]),
                                         vocab).scheduler)
    g = torch.Generator().manual_seed(1)
    x_t, eps = torch.randn(2, 6, generator=g), torch.randn(2, 6, generator=g)
    ab_prev = 1.0 if set_alpha_to_one else ab[0]
    ref, x0_ref = ddim_step_np(ab, 1, ab_prev, x_t.double().numpy(), eps.double().numpy(), "epsilon", 0.0, 0.0)
    for s in scheds:
        s.set_timesteps(50)
        assert s.timesteps[-1].item() == 1
        x_prev, x0 = s.step(eps, s.timesteps[-1], x_t)
        assert np.allclose(x0.numpy(), x0_ref, atol=1e-5)
        assert np.allclose(x_prev.numpy(), ref, atol=1e-5)
        if set_alpha_to_one:
            assert np.allclose(x_prev.numpy(), x0_ref, atol=1e-5)           # alpha_bar_prev = 1: x_0 itself


def test_perfect_prediction_recovers_x0():
    s = models.DDIMScheduler("scaled_linear", "epsilon")
    x0, eps = torch.randn(4, 2, 8), torch.randn(4, 2, 8)
    t = torch.tensor([1, 201, 601, 981])
    _, x0_hat = s.step(eps, t, s.add_noise(x0, eps, t))
    assert torch.allclose(x0_hat, x0, atol=1e-3)


def test_eta_one_is_the_ddpm_posterior():
    """With 1000 steps and eta = 1, one step samples q(x_{t-1} | x_t, x0): its mean is the posterior
    mean and its std the posterior std sqrt(beta~_t)."""
    ab = alpha_bar_np("scaled_linear")
    s = models.DDIMScheduler("scaled_linear", "sample", steps_offset=0)       # grid 999..0: t - 1 is the next
    s.set_timesteps(1000)
    x0, x_t, z = torch.randn(2, 6), torch.randn(2, 6), torch.randn(2, 6)
    t = 500
    mean, _ = s.step(x0, t, x_t, eta=1.0, noise=torch.zeros_like(z))
    noisy, _ = s.step(x0, t, x_t, eta=1.0, noise=z)
    beta = 1 - ab[t] / ab[t - 1]
    mu = np.sqrt(ab[t - 1]) * beta / (1 - ab[t]) * x0.numpy() + np.sqrt(1 - beta) * (1 - ab[t - 1]) / (1 - ab[t]) * x_t.numpy()
    assert np.allclose(mean.numpy(), mu, atol=1e-4)
    sigma = np.sqrt((1 - ab[t - 1]) / (1 - ab[t]) * beta)
    assert np.allclose((noisy - mean).numpy(), sigma * z.numpy(), atol=1e-5)


def test_per_sample_timesteps_match_one_at_a_time():
    s = models.DDIMScheduler("cosine", "sample")
    x_t, out = torch.randn(3, 4, 7), torch.randn(3, 4, 7)
    t = torch.tensor([21, 481, 981])
    batched, _ = s.step(out, t, x_t)
    for i in range(3):
        single, _ = s.step(out[i:i + 1], int(t[i]), x_t[i:i + 1])
        assert torch.allclose(batched[i], single[0], atol=1e-6)


def test_lora_starts_as_identity_trains_only_adapters_and_merges():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 6))
    net.add_module("q", torch.nn.Linear(6, 6))
    x = torch.randn(5, 6)
    before = net(x).detach()
    (lora,) = models.inject_lora(net, r=2, alpha=4, targets=("q",))
    assert torch.allclose(net(x), before)                                # B = 0: nothing changes yet
    net(x).pow(2).sum().backward()
    grads = {n for n, p in net.named_parameters() if p.grad is not None}
    assert grads == {"q.lora_A", "q.lora_B"} or grads == {"q.lora_B"}    # only the adapter trains
    with torch.no_grad():
        lora.lora_B.normal_()
    adapted = net(x).detach()
    models.merge_lora(net)
    assert isinstance(net.q, torch.nn.Linear) and torch.allclose(net(x), adapted, atol=1e-5)


@pytest.mark.parametrize("backbone", ["mld", "mdm"])
def test_guidance_reads_the_null_token_alone_exactly_as_with_masked_padding(build_tiny, backbone):
    gen, _ = build_tiny(backbone)
    cond = gen.condition(["a person waves the left hand", "a person jumps forward twice"], [16, 24])
    x_t, t = torch.randn(gen.latent_shape(cond)), torch.tensor([500, 500])
    short = gen.predict(x_t, t, cond.tokens_u, cond.pad_u, cond)                     # (B, 1, d) text
    L = cond.tokens.shape[1]
    padded = torch.cat([cond.tokens_u, torch.randn(2, L - 1, cond.tokens.shape[2])], 1)    # junk behind a mask
    mask = torch.cat([cond.pad_u, torch.ones(2, L - 1, dtype=torch.bool)], 1)
    assert torch.allclose(short, gen.predict(x_t, t, padded, mask, cond), atol=1e-5)


@pytest.mark.parametrize("backbone", ["mld", "mdm"])
def test_guided_output_is_out_u_plus_w_times_out_c_minus_out_u(build_tiny, backbone):
    """Classifier-free guidance (MLD 7.5, MDM 2.5): out = out_u + w (out_c - out_u), out_c from the
    caption's tokens and out_u from the null token alone (cond.tokens_u / pad_u), each one predict()
    call; checked for w in {0, 2.5, 7.5}; denoise_step must step the scheduler on that output with the
    eta and noise it is given."""
    gen, _ = build_tiny(backbone)
    cond = gen.condition(["a person waves the left hand", "a person jumps forward twice"], [16, 24])
    x_t = torch.randn(gen.latent_shape(cond), generator=torch.Generator().manual_seed(0))
    t = torch.tensor([481, 481])
    with torch.no_grad():
        out_c = gen.predict(x_t, t, cond.tokens, cond.pad, cond).double()
        out_u = gen.predict(x_t, t, cond.tokens_u, cond.pad_u, cond).double()
        assert (out_c - out_u).abs().max() > 1e-2                          # the text matters: a lost branch shows
        for w in (0.0, 2.5, 7.5):
            ref = out_u + w * (out_c - out_u)
            assert torch.allclose(gen.guided_output(x_t, 481, cond, w).double(), ref, atol=1e-5), w
        gen.scheduler.set_timesteps(50)
        z = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(1))
        x_prev, x0 = gen.denoise_step(x_t, 481, cond, guidance=2.5, eta=0.5, noise=z)
        ref_prev, ref_x0 = gen.scheduler.step((out_u + 2.5 * (out_c - out_u)).float(), 481, x_t, 0.5, noise=z)
    assert torch.allclose(x0, gen.mask_latent(ref_x0, cond), atol=1e-5)
    assert torch.allclose(x_prev, gen.mask_latent(ref_prev, cond), atol=1e-5)


@pytest.mark.parametrize("backbone,eta", [("mld", 0.0), ("mdm", 1.0)])
def test_sampling_in_length_sorted_chunks_does_not_change_a_sample(build_tiny, backbone, eta):
    gen, _ = build_tiny(backbone)
    caps = ["a person waves", "a person jumps", "a person kicks", "a person bows", "a person sits down"]
    lengths = [40, 16, 28, 16, 52]
    one, chunked = (gen.sample(caps, lengths, steps=4, eta=eta, generator=torch.Generator().manual_seed(0), chunk=c)
                    for c in (64, 2))
    assert one.shape == (5, 52, 263) and (one[1, 16:] == 0).all()
    assert torch.allclose(one, chunked, atol=1e-5)


@pytest.fixture(scope="module")
def tiny_mld(tiny_data, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("mld") / "mld.pt")
    tc = models.TrainConfig(data=tiny_data, out=out, backbone="mld", preset="tiny", **models.PRESETS["tiny"][1])
    models.train(tc)
    return out


def test_tiny_pretraining_lowers_val_loss_and_samples(tiny_mld, tiny_data, tmp_path):
    ck = common.load_checkpoint(tiny_mld, "generator")
    for stage in ("vae", "denoiser"):
        vals = [e["val_loss"] for e in ck["log"] if e["stage"] == stage]
        assert vals[-1] < vals[0], (stage, vals)
    model = models.load_generator(tiny_mld)
    x = model.sample(["a person waves the left hand", "a person jumps"], [48, 80], steps=5)
    assert x.shape == (2, 80, 263) and torch.isfinite(x).all() and (x[0, 48:] == 0).all()


def test_mdm_tiny_trains(tiny_data, tmp_path):
    tc = models.TrainConfig(data=tiny_data, out=str(tmp_path / "mdm.pt"), backbone="mdm", preset="tiny",
                            **{**models.PRESETS["tiny"][1], "steps": 20})
    model = models.train(tc)
    x = model.sample(["a person kicks"], [44], steps=4)
    assert x.shape == (1, 44, 263) and torch.isfinite(x).all()


def test_checkpoint_round_trip_and_clear_errors(tiny_mld, tiny_data, tmp_path):
    a = models.load_generator(tiny_mld)
    b = models.load_generator(tiny_mld)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(a.sample(["a person bows"], [40], steps=3, generator=g1),
                       b.sample(["a person bows"], [40], steps=3, generator=g2))   # same seed, same sample
    ck = torch.load(tiny_mld, weights_only=True)
    ck["model_config"]["d_model"] = 48                                    # mismatched config
    bad = str(tmp_path / "bad.pt")
    torch.save(ck, bad)
    with pytest.raises(common.CheckpointError, match=r"bad\.pt: does not fit the model config: shape mismatch"):
        models.load_generator(bad)
    with open(tiny_mld, "rb") as f:
        blob = f.read()
    with open(tmp_path / "cut.pt", "wb") as f:                            # truncated file
        f.write(blob[: len(blob) // 2])
    with pytest.raises(common.CheckpointError, match=r"cut\.pt: corrupt or truncated"):
        models.load_generator(str(tmp_path / "cut.pt"))
    with pytest.raises(common.CheckpointError, match="not found"):
        models.load_generator(str(tmp_path / "missing.pt"))
    ck = torch.load(tiny_mld, weights_only=True)
    del ck["vocab"]                                                       # an entry missing
    torch.save(ck, bad)
    with pytest.raises(common.CheckpointError, match=r"bad\.pt: incomplete, or written by other code \(KeyError"):
        models.load_generator(bad)
    ck = torch.load(tiny_mld, weights_only=True)
    ck["model"]["null_text"].fill_(float("nan"))                         # a diverged run's weights
    torch.save(ck, bad)
    with pytest.raises(common.CheckpointError, match=r"bad\.pt: 1 tensors hold NaN or inf \(e\.g\. null_text\)"):
        models.load_generator(bad)
    ck = torch.load(tiny_mld, weights_only=True)
    torch.save({**ck, "train_config": None}, bad)                         # a fine-tuned generator: nothing to resume
    tc = models.TrainConfig(data=tiny_data, out=bad, preset="tiny", resume=True)
    with pytest.raises(common.CheckpointError, match=r"bad\.pt: a fine-tuned generator .*nothing to resume"):
        models.train(tc)


def test_resume_continues_the_step_count_the_lr_schedule_and_the_batches(tiny_data, tmp_path, monkeypatch, capsys,
                                                                          crash_on):
    out = str(tmp_path / "r.pt")
    tc = models.TrainConfig(data=tiny_data, out=out, backbone="mdm", preset="tiny",
                            **{**models.PRESETS["tiny"][1], "steps": 40, "eval_every": 10, "ckpt_every": 10})
    real = models.validation_loss
    monkeypatch.setattr(models, "validation_loss", crash_on(real, 3))    # dies at step 30, after the step-20 save
    with pytest.raises(KeyboardInterrupt):
        models.train(dataclasses.replace(tc, resume=True))                 # nothing to resume yet: said, then afresh
    assert f"--resume: no {out} to resume" in capsys.readouterr().out
    assert common.load_checkpoint(out)["step"] == 20
    monkeypatch.setattr(models, "validation_loss", crash_on(real, 2))          # resumed: saves at 30, dies at 40
    with pytest.raises(KeyboardInterrupt):
        models.train(dataclasses.replace(tc, resume=True))
    assert "resumed" in capsys.readouterr().out
    ck = common.load_checkpoint(out)                                       # the lr the optimizer holds for step 30
    assert ck["step"] == 30 and ck["optimizer"]["param_groups"][0]["lr"] == pytest.approx(
        tc.lr * models.lr_factor(30, tc.steps))                          # the uninterrupted schedule's, not step 31's
    monkeypatch.setattr(models, "validation_loss", real)
    with pytest.raises(common.CheckpointError, match=r"r.pt: --resume with settings .*batch_size: saved 16, asked 8"):
        models.train(dataclasses.replace(tc, resume=True, batch_size=8))            # another batch stream: refused
    models.train(dataclasses.replace(tc, resume=True))
    ck = common.load_checkpoint(out)
    assert ck["done"] and [e["step"] for e in ck["log"]] == [10, 20, 30, 40]
    times = [e["time_s"] for e in ck["log"]]
    assert times == sorted(times)                     # the clock goes on across the two resumes (time_s: the base's)
    models.train(dataclasses.replace(tc, out=str(tmp_path / "never_stopped.pt")))   # resumed mid-epoch twice,
    whole = common.load_checkpoint(str(tmp_path / "never_stopped.pt"))                # the same batches and crops:
    assert all(torch.equal(whole["model"][k], ck["model"][k]) for k in whole["model"])   # the same weights


def test_cli_bad_input_exits_2(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "models.py"), "sample", "--ckpt", str(tmp_path / "x.pt"),
                        "--text", "a person walks"], capture_output=True, text=True)
    assert r.returncode == 2 and "x.pt: checkpoint not found" in r.stderr
    r = subprocess.run([sys.executable, os.path.join(ROOT, "models.py"), "train", "--backbone", "gpt",
                        "--data", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 2 and "--backbone 'gpt'" in r.stderr


def test_sample_checks_both_outputs_before_any_work(tiny_mld, tmp_path):
    (tmp_path / "q_joints.npy").mkdir()                                   # the joints' path is taken by a folder
    r = subprocess.run([sys.executable, os.path.join(ROOT, "models.py"), "sample", "--ckpt", tiny_mld, "--text",
                        "a person walks", "--steps", "2", "--out", str(tmp_path / "q.npy")], capture_output=True, text=True)
    assert r.returncode == 2 and "q_joints.npy: is a folder" in r.stderr and not (tmp_path / "q.npy").exists()


def test_sample_refuses_a_caption_of_unknown_words_and_names_those_it_reads_as_unk(tiny_mld, tmp_path):
    """The text encoder's vocabulary is its training captions' words (no CLIP here): a caption with none of
    them would be <cls><unk>, a condition never trained on, sampled silently; a few unknown words are named."""
    cmd = [sys.executable, os.path.join(ROOT, "models.py"), "sample", "--ckpt", tiny_mld, "--steps", "2",
           "--out", str(tmp_path / "q.npy"), "--text"]
    r = subprocess.run(cmd + ["zzqx florbs"], capture_output=True, text=True)
    assert r.returncode == 2 and "none of its words is in" in r.stderr and not (tmp_path / "q.npy").exists()
    r = subprocess.run(cmd + ["a person zzqx walks"], capture_output=True, text=True)
    assert r.returncode == 0 and "warning: --text: zzqx not in the model's vocabulary" in r.stderr, r.stderr
    assert (tmp_path / "q.npy").exists()


def test_an_unfinished_pretraining_is_not_sampled_or_scored(tiny_mld, tmp_path):
    """A stopped `models.py train` saves to its --out as it goes (done: False, for --resume); loading it to
    sample or to score would report numbers of a model whose denoiser may never have trained."""
    ck = common.load_checkpoint(tiny_mld, "generator")
    common.atomic_save({**ck, "done": False, "stage": 0, "step": 20}, str(tmp_path / "stopped.pt"))
    with pytest.raises(common.CheckpointError, match=r"stopped\.pt: an unfinished pretraining .*--resume"):
        models.load_generator(str(tmp_path / "stopped.pt"))
    assert models.load_generator(tiny_mld).cfg.backbone == "mld"                     # a finished one loads
