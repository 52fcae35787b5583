"""Command-line pieces shared by several commands: list types, argument groups, profiles, devices."""

import argparse
import importlib.util
import itertools
import math
import os
from dataclasses import replace
from pathlib import Path

import torch

from bench.errors import UsageError
from bench.variants import CHANNELS, COMPILE_MODES, MEMORY_FORMATS, Variant, build_matrix, filter_variants
from loaders import LOADERS
from models import ARCHITECTURES, DOWNSAMPLES

# A profile is a set of defaults; any flag given on the command line wins. `gpu` (the default
# with a GPU) keeps the seed's job (all data, 20 epochs, batch 32) but feeds the matrix from the
# resident loader, so AMP and compile variants are not all held to the seed DataLoader's speed;
# beside each network it measures the seed's own pipeline (torch DataLoader, fp32, eager) and,
# where DALI imports, a DALI-fed row, each for `pipeline_epochs` epochs: enough for a steady
# throughput and data-wait share, short enough that the run fits 8 minutes on one H100.
# `seed` is the seed's exact job alone. `quick` checks the pipeline on two CPU cores and does not
# converge (the report says so): the resident loader so the cores train rather than decode PNGs,
# 512 training samples (a CPU trains per sample, so the subset sets the time; three epochs give
# three steady windows for the throughput's spread) and batch 16 so the seed's lr 1e-4 moves the
# weights in the steps it has. reference_steps: timed steps of each round of the plain reference
# loop (at least three rounds, see bench.worker.reference_loop).
PROFILES = {
    "quick": {"epochs": 3, "batch_size": [16], "loader": ["resident"], "train_limit": 512, "val_limit": 160,
              "infer_iters": 3, "reference_steps": 5, "pipeline_epochs": None},
    "gpu": {"epochs": 20, "batch_size": [32], "loader": ["resident"], "train_limit": None, "val_limit": None,
            "infer_iters": 50, "reference_steps": 100, "pipeline_epochs": 3},
    "seed": {"epochs": 20, "batch_size": [32], "loader": ["torch"], "train_limit": None, "val_limit": None,
             "infer_iters": 50, "reference_steps": 100, "pipeline_epochs": None},
}
# --robustness default per profile: evaluating the 12 conditions costs ~7-8 validation passes,
# ~4 % of a seed-profile run (CPU, add), so it is on wherever the run is a full study.
ROBUSTNESS_DEFAULT = {"quick": False, "gpu": True, "seed": True}


def default_profile(device_type: str) -> str:
    return "gpu" if device_type == "cuda" else "quick"


def dali_available() -> bool:
    """Whether DALI imports here (its rows join the gpu profile's matrix only then)."""
    try:
        return importlib.util.find_spec("nvidia.dali") is not None
    except ModuleNotFoundError:
        return False


def csv_list(kind, allowed=None):
    """argparse type for a comma-separated list, each item checked against `allowed`."""
    def parse(text: str) -> list:
        items = [kind(item) for item in text.split(",") if item]
        if allowed is not None:
            bad = [i for i in items if i not in allowed]
            if bad:
                raise argparse.ArgumentTypeError(f"{', '.join(map(str, bad))} not one of {', '.join(allowed)}")
        if not items:
            raise argparse.ArgumentTypeError("expected a comma-separated list")
        return items
    return parse


def bounded(kind, accept, expected: str):
    """argparse type: `kind(text)` where `accept` holds, else "expected <expected>, got <text>"
    (argparse names the option), so a bad value stops the command before it touches anything."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    return parse


positive = bounded(int, lambda v: v >= 1, "an integer of at least 1")
non_negative = bounded(int, lambda v: v >= 0, "an integer of 0 or more")
seed_value = bounded(int, lambda v: 0 <= v < 2**64, "an integer from 0 to 2**64 - 1 (what torch.manual_seed takes)")
positive_number = bounded(float, lambda v: 0 < v < math.inf, "a number above 0")
fraction = bounded(float, lambda v: 0 < v < 1, "a number between 0 and 1 (exclusive)")
percent = bounded(float, lambda v: 0 < v <= 100, "a percentage above 0 and at most 100")


def check_new_folder(path: str | Path, option: str = "--out") -> None:
    """Refuses, before any work, a folder the command could not make or write: a file in its
    place, or a nearest existing parent that is a file or not writable (mkdir would fail only
    after the data check or the work, with a traceback)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path} is a file, not a folder")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise UsageError(f"{option} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {path}: cannot write in {existing} (permission denied or a read-only file system)")


def shard_spec(text: str) -> tuple[int, int]:
    """argparse type for --shard I/N: the I-th (from 0) of N parts, 0 <= I < N."""
    index, sep, count = text.partition("/")
    try:
        index, count = int(index), int(count)
    except ValueError:
        index = count = -1
    if not sep or count < 1 or not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"expected I/N with 0 <= I < N (e.g. 0/4), got {text!r}")
    return index, count


def shard_of(variants: list, shard: tuple[int, int]) -> list:
    """The I-th of N disjoint parts of the matrix: every N-th variant in name order, from the I-th,
    so every machine computes the same split from the same flags and the parts differ by at most
    one variant. The variants keep the matrix's order."""
    index, count = shard
    names = sorted(v.name for v in variants)
    mine = set(names[index::count])
    part = [v for v in variants if v.name in mine]
    if not part:
        raise ValueError(f"--shard {index}/{count}: this part of the matrix is empty ({len(variants)} variants "
                         f"over {count} shards); use at most {len(variants)} shards")
    return part


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="dataset root in the NVIDIA assessment layout (default: generate data/synthetic)")
    p.add_argument("--split", help="split JSON {seed, train, val} (default: DATA/split.json, made on first use)")
    p.add_argument("--seed", type=seed_value, default=42, help="seed for data generation, the split, shuffling and init")
    p.add_argument("--per-class", type=positive, default=3000, help="samples per class when generating data")


def add_matrix_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", type=csv_list(str, ARCHITECTURES), default=list(ARCHITECTURES), help="late,concat,add,mul")
    p.add_argument("--downsample", type=csv_list(str, DOWNSAMPLES), default=["maxpool"], help="maxpool,strided")
    p.add_argument("--amp", action="store_true", help="add autocast variants beside fp32")
    p.add_argument("--amp-dtype", choices=("bf16", "fp16"), help="autocast dtype for --amp (default bf16; fp16 uses GradScaler)")
    p.add_argument("--compile", action="store_true", help="add torch.compile variants beside eager")
    p.add_argument("--compile-mode", type=csv_list(str, COMPILE_MODES[1:]),
                   help="torch.compile mode(s) beside eager, e.g. reduce-overhead,step (with --compile; --compile "
                        "alone: default); step: compiled model and the whole step in one CUDA graph")
    p.add_argument("--memory-format", type=csv_list(str, MEMORY_FORMATS), default=["contiguous"], help="contiguous,channels_last")
    p.add_argument("--batch-size", type=csv_list(positive), help="training batch size(s), e.g. 32,512 (profile default 32)")
    p.add_argument("--loader", type=csv_list(str, LOADERS), help="torch,resident,dali (profile default: quick resident, seed torch)")
    p.add_argument("--variants", nargs="+", metavar="PATTERN", help="keep variants whose name matches (glob or substring)")
    p.add_argument("--profile", choices=PROFILES, help="quick (default without a GPU), gpu (default with one) or seed")
    p.add_argument("--channels", type=csv_list(str, CHANNELS), default=["seed"],
                   help="seed,aligned: conv widths as the seed's, or zero-padded to multiples of 8 (same function)")
    p.add_argument("--shard", type=shard_spec, metavar="I/N", help="run only the I-th (from 0) of N disjoint parts "
                   "of the matrix, e.g. --shard $SLURM_ARRAY_TASK_ID/4; merge the parts with bench report --out")


def matrix(args, profile_name: str, amp_dtype: str | None = None) -> list:
    """The variants the matrix flags ask for, the profile filling what they leave out."""
    check_matrix_args(args)
    profile = PROFILES[profile_name]
    amp_dtype = amp_dtype or args.amp_dtype or "bf16"
    variants = build_matrix(args.arch, args.downsample, ["fp32", amp_dtype] if args.amp else ["fp32"],
                            compile_modes(args), args.memory_format,
                            args.batch_size or profile["batch_size"], args.loader or profile["loader"], args.channels)
    if profile["pipeline_epochs"] and not args.loader:
        variants = with_pipeline_rows(variants, profile["pipeline_epochs"], dali_available())
    chosen = filter_variants(variants, args.variants)
    if not chosen:
        raise UsageError(f"--variants {' '.join(args.variants)} matches none of the {len(variants)} variants "
                         "(see `python -m bench list`)")
    return shard_of(chosen, args.shard) if getattr(args, "shard", None) else chosen


def check_matrix_args(args) -> None:
    """A flag that only qualifies another must not be given alone: without it the matrix would
    silently run something else (every variant eager, or fp32)."""
    if args.compile_mode and not args.compile:
        raise UsageError(f"--compile-mode {','.join(args.compile_mode)} needs --compile (without it every variant runs eager)")
    if args.amp_dtype and not args.amp:
        raise UsageError(f"--amp-dtype {args.amp_dtype} needs --amp (without it every variant trains in fp32)")


def compile_modes(args) -> list[str]:
    """Eager, and the modes --compile-mode names (--compile alone: mode default)."""
    if args.compile_mode:
        return ["none", *args.compile_mode]
    return ["none", "default"] if args.compile else ["none"]


def with_pipeline_rows(variants: list, epochs: int, dali: bool) -> list:
    """Each network's variants led by the seed's pipeline (torch DataLoader, fp32, eager,
    contiguous, seed widths: once, also with --channels seed,aligned) and, with DALI, followed by a
    DALI-fed copy of its most optimised setting (the matrix's last: AMP and compiled where asked),
    the one most likely to outrun its loader: a loader that keeps it fed keeps every slower one fed."""
    rows = []
    for (arch, downsample, batch_size), group in itertools.groupby(variants, lambda v: (v.arch, v.downsample, v.batch_size)):
        group = list(group)
        rows.append(Variant(arch, downsample, batch_size=batch_size, loader="torch", epochs=epochs))
        rows += group
        if dali:
            rows.append(replace(group[-1], loader="dali", epochs=epochs))
    return list(dict.fromkeys(rows))


def resolve_device(name: str | None) -> torch.device:
    """The device a command runs on, always with an index on CUDA: --device as given (cpu, cuda,
    cuda:N), else cuda when available. CUDA events and synchronize() act on the current device, so
    it is made current; torch.cuda.set_device needs the index that a bare "cuda" lacks."""
    text = name or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise ValueError(f"--device {text}: expected cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {text}: expected cpu, cuda or cuda:N")
    if device.type == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"--device {text} asked for, but torch sees no CUDA device")
    index = torch.cuda.current_device() if device.index is None else device.index
    count = torch.cuda.device_count()
    if index >= count:
        raise ValueError(f"--device {text}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    torch.cuda.set_device(index)
    return torch.device("cuda", index)
