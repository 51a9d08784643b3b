"""
pipeline.py -- the one command, `python easytune.py --backbone mld`: every prerequisite built or reused, EasyTune
(easytune.finetune, Algorithm 1), the Table-1-style evaluation of base and tuned models on the test split, GIFs.

Nothing of the paper's method is here; this is what a fresh clone needs to reach the paper's Table 1 row:
    runs/<data>[-tiny]/data             the embedded benchmark (synth.py), unless --data names a folder
                       evaluator.pt     metrics.py, the independent yardstick (never trains or selects)
                       reward_pretrained.pt, reward.pt    spl.py, R_phi before and after SPL (Alg. 2)
                       mld.pt / mdm.pt  models.py, the pretrained backbone
                       easytune_<tag>/  best.pt (selected on val), last.pt, log.jsonl, gifs/
                       results.json     base, easytune and real rows, the config, the machine
Each build resumes when stopped; each artefact is reused only if trained on the same data. Checks that a second's
reading can make (the splits, the batch sizes, a given reward's dataset) come before the first build.

Run:  python easytune.py --backbone mld             # (easytune.main calls run() here)
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
import warnings

import torch

import common
import data
import easytune
import metrics
import models
import spl


def prerequisites(cfg: easytune.EasyTuneConfig, device):
    """Each artefact cached under runs/<dataset>[-tiny]/ (the preset's models apart), reported as built or
    reused; the data, the batch sizes and a given --reward-model checked before the first build."""
    tiny = cfg.preset == "tiny"
    name = (os.path.basename(os.path.abspath(cfg.data)) if cfg.data else "synth") + ("-tiny" if tiny else "")
    if cfg.data and not os.path.isdir(cfg.data):
        raise common.InputError(f"--data {cfg.data}: folder not found")
    if os.path.exists(cfg.runs) and not os.path.isdir(cfg.runs):
        raise common.InputError(f"--runs {cfg.runs}: a file, not a folder")
    common.writable(cfg.runs, "--runs")
    run = os.path.join(cfg.runs, name)                # made by the first artefact saved in it
    root = cfg.data or os.path.join(run, "data")
    report = {}

    def step(name, path, build, done):
        t = time.time()
        if done(path):
            report[name] = "reused"
        else:
            try:
                build()
            except common.ResumeMismatch as e:              # the one command always resumes a stopped build
                raise common.CheckpointError(f"[{name}] {e.path}: a stopped build of other settings, which this "
                                             f"command resumes ({e.why}); remove {e.path} to build afresh") from None
            report[name] = f"built in {time.time() - t:.0f}s"
        print(f"[{name}] {report[name]}: {path}", flush=True)

    if not cfg.data:
        import synth
        step("data", root, lambda: (shutil.rmtree(root, ignore_errors=True),
                                    synth.write_dataset(root, 80 if tiny else 1600, seed=0)),
             done=lambda p: os.path.isfile(os.path.join(p, "all.txt")))

    words = {}                                            # root's vocabularies, read once if something is reused

    def checkpoint(kind, cached=True):
        """Reused if it is a finished checkpoint of that kind (a truncated file is an error now) trained on root,
        by its statistics and its captions' vocabulary: the run folder is named after the data folder, so another
        folder of the same name must not reuse it (cached=False: a file the user gave, no such hint)."""
        def done(p):
            if not os.path.isfile(p):
                return False
            ck = common.load_checkpoint(p, kind)
            hint = f"; {run} is named after the data folder: another --runs keeps the two apart" if cached else ""
            key = "words" if kind == "evaluator" else "vocab"        # the evaluator's lemmas, the others' words
            if key not in words:
                words[key] = metrics.word_vocab(root) if key == "words" else data.build_vocab(root).itos
            with common.entries(p):
                data.check_same_dataset(root, p, ck["model"]["mean"], ck[key], words[key], hint)
                return bool(ck.get("done", True))           # a generator's pretraining may be unfinished
        return done

    preset = "tiny" if tiny else "default"
    ev_cfg = metrics.EvaluatorConfig(data=root, out=os.path.join(run, "evaluator.pt"), preset=preset, device=cfg.device,
                                     resume=True, **metrics.EVALUATOR_PRESETS[preset])   # resume: stopped builds go on
    r_cfg = dataclasses.replace(spl.RewardConfig(), data=root, out=os.path.join(run, "reward_pretrained.pt"),
                                preset=preset, device=cfg.device, resume=True, **spl.PRESETS[preset])
    s_cfg = dataclasses.replace(r_cfg, init=r_cfg.out, out=os.path.join(run, "reward.pt"),
                                **({} if tiny else spl.SPL_DEFAULTS))
    g_cfg = models.TrainConfig(data=root, out=os.path.join(run, f"{cfg.backbone}.pt"), backbone=cfg.backbone,
                               preset=preset, device=cfg.device, resume=True, **models.PRESETS[preset][1])
    with warnings.catch_warnings():                   # before any build (~1 s): each split usable, the batches fit
        warnings.simplefilter("ignore")               # (skipped clips are reported by the builds' own loaders)
        n, _, _ = (len(data.MotionTextDataset(root, split)) for split in ("train", "val", "test"))
    for what, b in (("the evaluator's", ev_cfg.batch_size), ("the reward's", r_cfg.batch_size),
                    ("SPL's", s_cfg.batch_size), (f"{cfg.backbone.upper()}'s", g_cfg.batch_size),
                    ("fine-tuning's (--batch-size)", cfg.batch_size)):
        if b > n:
            raise common.InputError(f"--data {root}: {n} training items, fewer than {what} batch of {b}"
                                    + ("" if tiny else " (--preset tiny trains with smaller ones)"))
    for path in cfg.reward_model.split(",") if cfg.reward_model else []:      # R_phi given: of this dataset
        checkpoint(easytune.reward_kind(path), cached=False)(path)
    step("evaluator", ev_cfg.out, lambda: metrics.train_evaluator(ev_cfg), checkpoint("evaluator"))
    if not cfg.reward_model:                                              # --reward-model: R_phi is given
        step("reward (pretraining)", r_cfg.out, lambda: spl.train(r_cfg, "pretrain"), checkpoint("reward"))
        step("reward (SPL)", s_cfg.out, lambda: spl.train(s_cfg, "spl"), checkpoint("reward"))
    step(f"{cfg.backbone} (pretraining)", g_cfg.out, lambda: models.train(g_cfg), checkpoint("generator"))
    return run, root, report


def reward_name(path, run_dir):
    """A --reward-model file in the output folder's name: its stem if it lies in the run folder (reward_s8), else
    the stem and a hash of where it is (reward@1a2b3c), so two folders' reward.pt never share an output folder."""
    stem = os.path.splitext(os.path.basename(path))[0]
    if os.path.dirname(os.path.abspath(path)) == os.path.abspath(run_dir):
        return stem
    return f"{stem}@{hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:6]}"


def load_reward_model(path, test_evaluator, device):
    """R_phi: a spl.py reward; several, comma-separated, as their mean (spl.RewardEnsemble); or (a
    diagnostic) a metrics.py evaluator that is not the test evaluator (compared by weights, so a renamed
    copy is refused too): the evaluator that reports never trains."""
    if easytune.reward_kind(path) == "reward":
        rewards = [spl.load_reward(p, device) for p in path.split(",")]
        return spl.RewardEnsemble(rewards) if len(rewards) > 1 else rewards[0]
    ev, test = metrics.load_evaluator(path, device), metrics.load_evaluator(test_evaluator, device)
    a, b = ev.state_dict(), test.state_dict()
    if a.keys() == b.keys() and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a):
        raise common.InputError(f"--reward-model {path}: this is the test evaluator ({test_evaluator}); the "
                              "evaluator that reports the results cannot also be the reward")
    return ev


def check_reward_data(reward, gen, root, path):
    """R_phi must be trained on root, as the generator is: its statistics and its captions' vocabulary."""
    one = reward.members[0] if isinstance(reward, spl.RewardEnsemble) else reward     # members share a dataset
    if isinstance(reward, metrics.Evaluator):
        data.check_same_dataset(root, path, one.mean, reward.words, metrics.word_vocab(root))
    else:                                                 # gen's vocabulary is root's (checked as a prerequisite)
        data.check_same_dataset(root, path, one.mean, reward.vocab.itos, gen.vocab.itos)


def evaluate_cached(gen_path, ev, root, cfg, device, cache):
    """Test-split metrics of a checkpoint, cached by (file, size, mtime, replications, seed, steps, guidance,
    device kind, and the machine: a CUDA generator draws other noise than a CPU one, and another CPU, thread
    count, GPU model or torch rounds otherwise, so the rows of base and tuned come from one kind of machine)."""
    key = (f"{common.identity(gen_path)}:{cfg.replications}:{cfg.seed}:{cfg.sample_steps}:{cfg.guidance}"
           f":{json.dumps(common.digits_key(device), sort_keys=True)}")   # guidance < 0: the checkpoint's scale
    store = {}
    if os.path.isfile(cache):
        try:
            with open(cache) as f:
                store = json.load(f)
        except ValueError:
            store = None
        if not isinstance(store, dict):
            print(f"warning: {cache}: not this cache's JSON, so not used (it is rewritten with this run's rows)")
            store = {}
    if key not in store:
        gen = easytune.set_guidance(models.load_generator(gen_path, device), cfg.guidance)
        t = time.time()
        store[key] = metrics.evaluate(gen, ev, root, cfg.replications, cfg.seed, device, steps=cfg.sample_steps)
        store[key]["eval_time_s"] = time.time() - t
        common.atomic_write(cache, json.dumps(store))
    return store[key]


PROMPTS = ["a person waves the left hand", "a person waves the right hand", "a person jumps forward twice",
           "a person walks backward and then turns left", "a person kicks with the right leg"]


def render(base, tuned, path_dir, device):
    """Stick-figure GIFs of fixed prompts, base vs tuned (optional: needs matplotlib)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("matplotlib not installed: skipping the GIFs (pip install matplotlib)")
        return []
    import viz
    os.makedirs(path_dir, exist_ok=True)
    paths = []
    for k, prompt in enumerate(PROMPTS):
        clips = []
        for gen in (base, tuned):
            g = torch.Generator(device=device).manual_seed(k)
            x = gen.sample([prompt], [80], generator=g)[0]
            clips.append(data.recover_from_ric((x * gen.std + gen.mean).cpu().numpy()))
        path = os.path.join(path_dir, f"{k}_{prompt.replace(' ', '_')}.gif")
        viz.animate(clips, ["base", "EasyTune"], path, data.skeleton_for_dims(int(base.mean.shape[0])))
        paths.append(path)
    return paths


def run(cfg: easytune.EasyTuneConfig):
    t_start = time.time()
    device = common.pick_device(cfg.device)
    common.seed_everything(cfg.seed)
    common.print_config(cfg, "easytune")
    run_dir, root, report = prerequisites(cfg, device)
    tag = cfg.backbone + ("-" + "+".join(reward_name(p, run_dir) for p in cfg.reward_model.split(","))
                          if cfg.reward_model else "")
    gen_path = os.path.join(run_dir, f"{cfg.backbone}.pt")
    gen = models.load_generator(gen_path, device)
    reward = load_reward_model(cfg.reward_model or os.path.join(run_dir, "reward.pt"),
                               os.path.join(run_dir, "evaluator.pt"), device)
    check_reward_data(reward, gen, root, cfg.reward_model or os.path.join(run_dir, "reward.pt"))
    out_dir = os.path.join(run_dir, f"easytune_{tag}")                   # another reward: its own folder
    os.makedirs(out_dir, exist_ok=True)
    t0 = time.time()
    summary = easytune.finetune(gen, reward, cfg, root, out_dir, os.path.join(out_dir, "log.jsonl"))
    print(f"fine-tuned in {time.time() - t0:.0f}s: {summary['updates']} updates over {summary['trajectories']} "
          f"trajectories, peak saved-tensor memory {summary['peak_saved_mib']:.1f} MiB; selected on val: "
          f"{summary['best']}")
    ev = metrics.load_evaluator(os.path.join(run_dir, "evaluator.pt"), device)
    cache = os.path.join(run_dir, "eval_cache.json")
    rows = {"base": evaluate_cached(gen_path, ev, root, cfg, device, cache),
            "easytune": evaluate_cached(os.path.join(out_dir, "best.pt"), ev, root, cfg, device, cache)}
    base_ck = common.load_checkpoint(gen_path, "generator")
    rows["base"].update(peak_saved_mib=0.0, time_s=base_ck["log"][-1]["time_s"] if base_ck.get("log") else None)
    rows["easytune"].update(peak_saved_mib=summary["peak_saved_mib"], time_s=summary["time_s"])
    real = metrics.evaluate_real(ev, root, cfg.replications, cfg.seed, device)
    result = {**rows, "real": real, "config": dataclasses.asdict(cfg), "prerequisites": report,
              "finetune": {k: v for k, v in summary.items() if k != "history"},
              "val_history": summary["history"],
              "guidance": gen.cfg.guidance, "machine": common.machine(device), "total_time_s": time.time() - t_start}
    names = (f"results_{tag}.json",) + (() if cfg.reward_model else ("results.json",))
    for name in names:
        common.atomic_write(os.path.join(run_dir, name), json.dumps(result, indent=1))
    print_table(result, cfg)
    gifs = render(easytune.set_guidance(models.load_generator(gen_path, device), cfg.guidance),
                  models.load_generator(os.path.join(out_dir, "best.pt"), device),
                  os.path.join(out_dir, "gifs"), device)
    if gifs:
        print(f"GIFs (base | EasyTune): {os.path.dirname(gifs[0])}/")
    print(f"total {time.time() - t_start:.0f}s; results in {' and '.join(os.path.join(run_dir, n) for n in names)}")
    return result


def print_table(result, cfg):
    m = result.get("machine") or {}                       # another CPU or thread count rounds otherwise
    on = f" on {m['gpu'] or m['cpu']}, {m['threads']} threads, torch {m['torch']}" if m else ""
    print(f"\n{cfg.backbone.upper()} on the test split, guidance {result['guidance']}, {cfg.replications} replications"
          f" (mean ± 95% CI){on}:")
    print(f"{'':>10} {'R-P top1':>14} {'top2':>14} {'top3':>14} {'FID':>14} {'MM-Dist':>14} {'Diversity':>14}"
          f" {'mem MiB':>8} {'time s':>7}")
    for name in ("real", "base", "easytune"):
        row = result[name]
        cells = " ".join(f"{row[k]['mean']:>7.3f}±{row[k]['ci']:<6.3f}" for k in metrics.KEYS)
        extra = "" if name == "real" else f" {row['peak_saved_mib']:>8.1f} {row['time_s'] or 0:>7.0f}"
        print(f"{name:>10} {cells}{extra}")
    b, e = result["base"], result["easytune"]
    print(f"EasyTune vs base: R-P top1 {metrics.pct(e['R1']['mean'] / b['R1']['mean'] - 1)}, "
          f"MM-Dist {metrics.pct(e['MMDist']['mean'] / b['MMDist']['mean'] - 1)} (lower is better), "
          f"FID {e['FID']['mean']:.3f} vs {b['FID']['mean']:.3f}±{b['FID']['ci']:.3f}")
