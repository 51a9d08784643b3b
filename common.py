"""
common.py -- the plumbing every module shares, so each file keeps to its own concern:

  errors       InputError (a bad file, folder or flag; cli() turns it into one line and exit code 2) and
               CheckpointError; data.py adds DataError for malformed dataset folders
  configs      one dataclass per module is the single source of defaults: add_config_args makes its
               flags, given_flags says which were typed, fill puts a preset in the others (a typed flag
               wins), check_ranges refuses a bad value before any work, print_config prints the config
  checkpoints  atomic_save / atomic_write / keep_lines (write, then rename), load_checkpoint (weights_only,
               the kind checked), entries (a missing entry or a foreign config named), load_state (names
               what does not fit, refuses non-finite weights)
  resuming     save_progress / load_progress (an unfinished run's state: weights, optimizer, generators),
               rng_state / set_rng_state (the global generators a loop draws from), check_resumable
               (--resume goes on only with the saved run's settings and kind of device)
  devices      pick_device, cpu / machine / digits_key (what a run's numbers were computed on), identity
               (a file as a cache finds it again), seed_everything
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import math
import os
import platform
import sys
import tempfile

import numpy as np
import torch

# -----------------------------------------------------------------------------
# Errors: every bad input raises one of these with the file/argument and what is wrong.


class InputError(ValueError):
    """A file, folder or argument is not what it should be. The CLI turns it into exit code 2."""


class CheckpointError(InputError):
    """A checkpoint is missing, corrupt, truncated, or does not fit the model it is loaded into."""


class ResumeMismatch(CheckpointError):
    """A stopped run cannot go on with these settings or on this kind of device: `why`, then the way out."""
    def __init__(self, path: str, why: str, fix: str):
        super().__init__(f"{path}: {why}; {fix}")
        self.path, self.why = path, why


# -----------------------------------------------------------------------------
# Devices, seeds, configs as flags, atomic checkpoints, the CLI wrapper.


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda") or (device.type == "cpu" and device.index):
        raise InputError(f"--device {name!r}: auto, cpu, cuda or cuda:N")      # 'cpu:1' would run on cpu
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: CUDA is not available on this machine")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise InputError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                         f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device


@functools.cache
def _cpu_model() -> str:
    name = platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:                                   # Linux; elsewhere the architecture
            name = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), name)
    return name


def cpu() -> str:
    """The CPU as a run's digits depend on it: its model (MKL picks its kernels by vendor and instruction set)
    and the vector instructions ATen uses."""
    return f"{_cpu_model()}, {torch.backends.cpu.get_cpu_capability()}"


def machine(device: torch.device) -> dict:
    """What the numbers were computed on: float sums round differently on another CPU, thread count or GPU,
    so a run repeats to the last digit only on the same kind of machine."""
    return {"torch": torch.__version__, "device": str(device), "threads": torch.get_num_threads(), "cpu": cpu(),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}


def digits_key(device: torch.device) -> dict:
    """machine() with the device by its kind: what decides a computation's digits (cuda and cuda:1 of one
    model draw the same numbers), for a cache or a resumed evaluation to check against."""
    return {**machine(device), "device": device.type}


def identity(path: str) -> str:
    """A file as a cache or a resumed evaluation must find it again: where it is, its size, when it was written."""
    st = os.stat(path)
    return f"{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns}"


def seed_everything(seed: int):
    np.random.seed(seed)
    torch.manual_seed(seed)


def add_config_args(parser: argparse.ArgumentParser, cfg_cls, skip=()):
    """One --flag per dataclass field, defaults taken from the dataclass (the single source)."""
    for f in dataclasses.fields(cfg_cls):
        if f.name in skip:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kind = type(default)
        if kind is bool:
            assert not default, f"{cfg_cls.__name__}.{f.name}: a switch defaults to False"
            parser.add_argument(f"--{f.name.replace('_', '-')}", action="store_true", help="(a switch)")
        else:
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=kind if kind in (int, float, str) else str,
                                default=default, help=f"(default {default})")


SEED = (0, 2**31 - 1)     # the seed flags' range: numpy's legacy seed takes < 2**32, and runs add offsets to it


def check_ranges(cfg, **rules):
    """Each field against its rule, ">= 1", "> 0", ">= 0" or (lo, hi) inclusive, and finite; a field left
    None (an optional flag not given) passes. The first that fails is an InputError naming its flag, before
    any work (not a ZeroDivisionError minutes into a run)."""
    for name, rule in rules.items():
        v = getattr(cfg, name)
        if v is None:
            continue
        if not math.isfinite(v):
            ok, want = False, "finite"
        elif isinstance(rule, tuple):
            ok, want = rule[0] <= v <= rule[1], f"in {rule[0]}..{rule[1]}"
        else:
            op, bound = rule.split()
            ok, want = (v > float(bound)) if op == ">" else (v >= float(bound)), rule
        if not ok:
            raise InputError(f"--{name.replace('_', '-')} {v}: must be {want}")


def given_flags(parser: argparse.ArgumentParser, argv=None) -> set:
    """The destinations the command line set explicitly (even to their default value). argparse fills a
    default only where the namespace lacks the attribute, so a namespace pre-filled with a marker keeps the
    marker wherever nothing was given."""
    unset = object()
    ns = argparse.Namespace(**{k: unset for k in vars(parser.parse_args(argv))})
    return {k for k, v in vars(parser.parse_args(argv, namespace=ns)).items() if v is not unset}


def fill(cfg, values: dict, given: set):
    """cfg with `values` (a preset's, a backbone's) in every field the command line did not set: a flag
    typed on the command line wins, even when it repeats the dataclass default."""
    return dataclasses.replace(cfg, **{k: v for k, v in values.items() if k not in given})


def config_from_args(cfg_cls, args, **override):
    names = {f.name for f in dataclasses.fields(cfg_cls)}
    values = {k: v for k, v in vars(args).items() if k in names}
    values.update(override)
    return cfg_cls(**values)


def writable(path: str, flag: str) -> str:
    """Check, before any work, that path (a file or a folder, made or not) can be written: its nearest
    existing ancestor is a folder this process can create a file in (not a file, not read-only). -> path."""
    if not path:
        raise InputError(f"{flag}: an empty path")
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise InputError(f"{flag} {path}: cannot make its folder, {folder} is a file")
    try:
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as e:
        raise InputError(f"{flag} {path}: {folder} cannot be written ({e.strerror})") from None
    return path


def output_path(path: str, flag: str, suffixes: tuple = (), kind: str | None = None) -> str:
    """Check an output path before any work (not after it): not a folder, one of the suffixes if given,
    writable; with `kind` (a checkpoint to be trained), a .pt that holds no other kind of checkpoint, so a
    slip of --out never replaces a dataset file or another model. Its folder is made. -> path."""
    if os.path.isdir(path):
        raise InputError(f"{flag} {path}: is a folder, give a file name")
    suffixes = (".pt",) if kind else suffixes
    if suffixes and not path.endswith(suffixes):
        raise InputError(f"{flag} {path}: must end in {' or '.join(suffixes)}")
    writable(path, flag)
    held = load_checkpoint(path)["kind"] if kind and os.path.exists(path) else kind
    if held != kind:
        raise InputError(f"{flag} {path}: holds a '{held}' checkpoint, not a {kind}; give another name")
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    except FileExistsError as e:                               # a file where a folder of the path should be
        raise InputError(f"{flag} {path}: cannot make its folder, {e.filename} is a file") from None
    except OSError as e:
        raise InputError(f"{flag} {path}: cannot make its folder ({e.strerror}: {e.filename})") from None
    return path


def print_config(cfg, title: str = "config"):
    print(f"{title}: " + ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(cfg).items()), flush=True)


def atomic_save(obj, path: str):
    """torch.save to a temporary file in the same folder, then rename: a crash never leaves a
    half-written checkpoint under the real name."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def atomic_write(path: str, text: str):
    """A text file (JSON, a log) written the same way: a temporary file in the same folder, then a rename."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def keep_lines(path: str, keep):
    """Rewrite a JSONL log, atomically, with only the records keep(record) accepts (a resumed run's log
    keeps the work it will not redo, so what it redoes is logged once); no file: an empty one. A line that
    is not JSON (a run killed while appending it) is dropped, and said."""
    lines, damaged = [], 0
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    damaged += 1
                    continue
                if keep(record):
                    lines.append(line)
    if damaged:
        print(f"warning: {path}: dropped {damaged} damaged line(s) (not JSON)")
    atomic_write(path, "".join(lines))


def load_checkpoint(path: str, kind: str | None = None) -> dict:
    """Load a plain-dict checkpoint with weights_only=True; clear errors for a missing, corrupt or
    truncated file, or for a checkpoint of another kind (e.g. a reward where a generator was asked)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: " + ("a folder, not a checkpoint" if os.path.isdir(path) else "checkpoint not found"))
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        why = str(e).split("WeightsUnpickler error:", 1)[-1]         # past torch's preamble on weights_only
        why = next((ln.strip() for ln in why.splitlines() if ln.strip()), "empty file")
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({type(e).__name__}: {why[:120]})") from None
    if not isinstance(ck, dict) or "kind" not in ck:
        raise CheckpointError(f"{path}: not a checkpoint of this project (no 'kind' entry)")
    if kind is not None and ck["kind"] != kind:
        raise CheckpointError(f"{path}: expected a '{kind}' checkpoint, got '{ck['kind']}'")
    return ck


@contextlib.contextmanager
def entries(path: str):
    """Read a loaded checkpoint's entries inside this: an entry that is missing, or a saved config this code
    does not take, is a CheckpointError naming the file, not a KeyError deep in a loader."""
    try:
        yield
    except InputError:
        raise
    except (KeyError, TypeError, AttributeError, ValueError) as e:      # ValueError: e.g. an optimizer that does not fit
        raise CheckpointError(f"{path}: incomplete, or written by other code ({type(e).__name__}: {e})") from None


def load_state(module: torch.nn.Module, state: dict, path: str):
    """load_state_dict that names what differs instead of a state-dict traceback, and refuses weights that
    are not finite (a diverged run's), which would make every later number NaN without a word."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: its 'model' entry is not a state dict")
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append("shape mismatch " + "; ".join(shapes[:3]))
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        raise CheckpointError(f"{path}: does not fit the model config: " + ", ".join(parts))
    nan = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if nan:
        raise CheckpointError(f"{path}: {len(nan)} tensors hold NaN or inf (e.g. {nan[0]}): a diverged run's weights")
    module.load_state_dict(state)


def rng_state(device: torch.device) -> dict:
    """The global generators a training loop draws from (torch's CPU one, the GPU's on a GPU, numpy's
    legacy one), as values a weights_only checkpoint holds."""
    name, key, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "numpy": [name, key.tolist(), pos, has_gauss, gauss]}


def set_rng_state(state: dict, device: torch.device):
    torch.set_rng_state(state["torch"])
    if device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    name, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.array(key, dtype=np.uint32), pos, has_gauss, gauss))


def to_resume(path: str, resume: bool) -> bool:
    """Whether a run asked to --resume has something to resume at path; if not, it says so and starts afresh
    (the one command builds every prerequisite with resume on, so a missing state is not an error)."""
    found = resume and os.path.isfile(path)
    if resume and not found:
        print(f"--resume: no {path} to resume, so this run starts afresh")
    return found


def save_progress(path: str, kind: str, cfg, device: torch.device, step: int, elapsed: float, model, opt, dataset,
                  **extra):
    """An unfinished training run's state, everything a resume must restore: the weights, the optimizer,
    the global generators and the dataset's crop RNG, the settings and device kind to check against."""
    atomic_save({"kind": kind, "config": dataclasses.asdict(cfg), "device_type": device.type, "step": step,
                 "elapsed": elapsed, "model": model.state_dict(), "optimizer": opt.state_dict(),
                 "rng": rng_state(device), "data_rng": dataset.rng.bit_generator.state, **extra}, path)


def load_progress(path: str, kind: str, cfg, device: torch.device, model, opt) -> dict:
    """Restore a save_progress state into model, opt and the global generators, after checking it was saved
    with cfg's settings on this kind of device. -> the checkpoint (step, elapsed, data_rng and the extras)."""
    ck = load_checkpoint(path, kind)
    with entries(path):
        check_resumable(ck["config"], ck["device_type"], cfg, path, device)
        load_state(model, ck["model"], path)
        opt.load_state_dict(ck["optimizer"])
        set_rng_state(ck["rng"], device)
    print(f"resumed {path} at step {ck['step']}")
    return ck


def check_resumable(saved: dict, saved_device: str, cfg, path: str, device: torch.device, may_change=("resume", "device")):
    """--resume continues a saved run only with its settings (cfg: a config dataclass or a dict; those in
    may_change may differ) and on its kind of device (a CPU generator's state cannot continue a CUDA one's
    draws); else a CheckpointError naming each setting that differs."""
    if saved_device != device.type:
        raise ResumeMismatch(path, f"saved on {saved_device}, resuming on {device.type}: the noise draws cannot "
                             "continue across kinds of device", f"--device {saved_device}, or drop --resume")
    asked = cfg if isinstance(cfg, dict) else dataclasses.asdict(cfg)
    diff = [f"{k}: saved {saved.get(k)!r}, asked {v!r}" for k, v in asked.items()
            if k not in may_change and saved.get(k) != v]
    if diff:
        raise ResumeMismatch(path, f"--resume with settings other than the saved run's ({'; '.join(diff)})",
                             "give the saved values, or drop --resume to start over")


def cli(main):
    """Run a module's main(); bad input prints 'error: ...' and exits with code 2, no traceback."""
    try:
        main()
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
