"""python -m bench: generate data, split it, list and run the variant matrix, time loaders, report."""

import argparse
import sys
from datetime import datetime
from pathlib import Path

import torch

from bench.variants import COMPILE_MODES, MEMORY_FORMATS, build_matrix, filter_variants
from loaders import LOADERS
from loaders.dataset import DatasetError
from models import ARCHITECTURES, DOWNSAMPLES

# A profile is a set of defaults; any flag given on the command line wins. `seed` is the seed's
# exact job. `quick` fits two CPU cores in about five minutes: the resident loader so the cores
# train rather than decode PNGs, and batch 16 so the seed's lr 1e-4 gets enough steps to learn.
PROFILES = {
    "quick": {"epochs": 3, "batch_size": "16", "loader": "resident", "train_limit": 1024, "val_limit": 160,
              "infer_iters": 3},
    "seed": {"epochs": 20, "batch_size": "32", "loader": "torch", "train_limit": None, "val_limit": None,
             "infer_iters": 50},
}


def _csv(kind, allowed=None):
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


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="dataset root in the NVIDIA assessment layout (default: generate data/synthetic)")
    p.add_argument("--split", help="split JSON {seed, train, val} (default: DATA/split.json, made on first use)")
    p.add_argument("--seed", type=int, default=42, help="seed for data generation, the split, shuffling and init")
    p.add_argument("--per-class", type=_positive, default=3000, help="samples per class when generating data")


def _add_matrix_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", type=_csv(str, ARCHITECTURES), default=list(ARCHITECTURES), help="late,concat,add,mul")
    p.add_argument("--downsample", type=_csv(str, DOWNSAMPLES), default=["maxpool"], help="maxpool,strided")
    p.add_argument("--amp", action="store_true", help="add autocast variants beside fp32")
    p.add_argument("--amp-dtype", choices=("bf16", "fp16"), default="bf16", help="autocast dtype for --amp (fp16 uses GradScaler)")
    p.add_argument("--compile", action="store_true", help="add torch.compile variants beside eager")
    p.add_argument("--compile-mode", choices=COMPILE_MODES[1:], default="default", help="torch.compile mode for --compile")
    p.add_argument("--memory-format", type=_csv(str, MEMORY_FORMATS), default=["contiguous"], help="contiguous,channels_last")
    p.add_argument("--batch-size", type=_csv(_positive), help="training batch size(s), e.g. 32,512 (profile default 32)")
    p.add_argument("--loader", type=_csv(str, LOADERS), help="torch,resident,dali (profile default: quick resident, seed torch)")
    p.add_argument("--variants", nargs="+", metavar="PATTERN", help="keep variants whose name matches (glob or substring)")
    p.add_argument("--profile", choices=PROFILES, help="quick (default without a GPU) or seed (default with one)")


def _matrix(args) -> list:
    profile = PROFILES[args.profile]
    variants = build_matrix(args.arch, args.downsample, ["fp32", args.amp_dtype] if args.amp else ["fp32"],
                            ["none", args.compile_mode] if args.compile else ["none"], args.memory_format,
                            args.batch_size or _csv(_positive)(profile["batch_size"]),
                            args.loader or [profile["loader"]])
    chosen = filter_variants(variants, args.variants)
    if not chosen:
        raise SystemExit(f"error: --variants {' '.join(args.variants)} matches none of the {len(variants)} variants "
                         "(see `python -m bench list`)")
    return chosen


def _device(args) -> torch.device:
    name = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"error: --device {name} asked for, but torch sees no CUDA device")
    if device.type == "cuda":
        torch.cuda.set_device(device)  # CUDA events and synchronize() act on the current device
    return device


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = root.add_subparsers(dest="command", required=True)

    p = sub.add_parser("data", help="generate a synthetic dataset in the NVIDIA assessment layout")
    p.add_argument("--out", default="data/synthetic", help="folder to write (must not hold a dataset already)")
    p.add_argument("--per-class", type=_positive, default=3000)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--prepare", action="store_true", help="also pack it into the raw form DALI reads without decoding")

    p = sub.add_parser("prepare", help="pack a dataset into raw arrays for the DALI loader")
    p.add_argument("--data", required=True)

    p = sub.add_parser("split", help="write a seeded, stratified split JSON")
    p.add_argument("--data", required=True)
    p.add_argument("--out", help="default: DATA/split.json")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--val-fraction", type=float, default=0.2)

    p = sub.add_parser("list", help="print the variant matrix without running it")
    _add_matrix_args(p)

    p = sub.add_parser("all", help="train and measure every variant of the matrix")
    _add_data_args(p)
    _add_matrix_args(p)
    p.add_argument("--epochs", type=_positive)
    p.add_argument("--device", help="cuda, cuda:1 or cpu (default: cuda when available)")
    p.add_argument("--out", help="run directory (default runs/<timestamp>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run: skip variants already done there")
    p.add_argument("--target-acc", type=float, default=99.0, help="validation accuracy %% for time-to-target")
    p.add_argument("--repeats", type=_positive, default=1, help="train each variant this many times")
    p.add_argument("--warmup-steps", type=_positive, default=5, help="first steps excluded from timing")
    p.add_argument("--infer-batch-sizes", type=_csv(_positive), default=[], help="extra inference batch sizes")
    p.add_argument("--workers", type=int, default=2, help="loader worker processes/threads")
    p.add_argument("--nvml-period", type=float, default=0.02, help="NVML sampling period in seconds")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("loaders", help="time each loader over full epochs")
    _add_data_args(p)
    p.add_argument("--loader", type=_csv(str, LOADERS), default=list(LOADERS))
    p.add_argument("--batch-size", type=_positive, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--epochs", type=_positive, default=2, help="timed epochs after the first")
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    p.add_argument("--out", help="run directory (default runs/loaders-<timestamp>)")
    p.add_argument("--subset", type=_positive, help="time only this many training samples")

    p = sub.add_parser("report", help="rebuild report.md and plots from a run directory")
    p.add_argument("run_dir")
    return root


def _run_dir(out: str | None, prefix: str = "") -> Path:
    """The run directory's path; created by the first file written, so bad input leaves none behind."""
    return Path(out) if out else Path("runs") / f"{prefix}{datetime.now():%Y%m%d-%H%M%S}"


def cmd_data(args) -> None:
    from loaders.generate import generate_dataset
    root = generate_dataset(args.out, per_class=args.per_class, seed=args.seed)
    print(f"wrote {2 * args.per_class} samples to {root}")
    if args.prepare:
        cmd_prepare(argparse.Namespace(data=str(root)))


def cmd_prepare(args) -> None:
    from loaders.dataset import discover_ids
    from loaders.prepare import prepare_dataset
    discover_ids(args.data)
    print(f"prepared arrays in {prepare_dataset(args.data)}")


def cmd_split(args) -> None:
    from loaders.dataset import discover_ids
    from loaders.split import make_split, save_split
    split = make_split(discover_ids(args.data), args.val_fraction, args.seed)
    path = save_split(split, args.out or Path(args.data) / "split.json")
    print(f"wrote {path}: {len(split['train'])} train, {len(split['val'])} val (seed {args.seed})")


def cmd_list(args) -> None:
    args.profile = args.profile or ("seed" if torch.cuda.is_available() else "quick")
    for variant in _matrix(args):
        print(variant.name)


def cmd_all(args) -> int:
    from bench.data import resolve_data, resolve_split
    from bench.env import collect_env, hardware_key
    from bench.run import run_matrix
    from bench.runner import RunConfig
    from loaders.split import stratified_subset
    from reports.results import FINGERPRINT, write_env

    if args.resume and not (Path(args.resume) / "results.csv").exists():
        raise SystemExit(f"error: --resume {args.resume}: no results.csv there (is it a run directory?)")
    device = _device(args)
    if args.amp and args.amp_dtype == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        print(f"{torch.cuda.get_device_name(device)} has no bf16: --amp uses fp16 (with GradScaler)")
        args.amp_dtype = "fp16"
    args.profile = args.profile or ("seed" if device.type == "cuda" else "quick")
    profile = PROFILES[args.profile]
    variants = _matrix(args)
    run_dir = _run_dir(args.resume or args.out)
    root, ids = resolve_data(args.data, args.per_class, args.seed, progress=not args.no_progress)
    split, split_path = resolve_split(root, ids, args.split, args.seed, fallback_dir=run_dir)
    cfg = RunConfig(
        data_root=str(root),
        train_ids=stratified_subset(split["train"], profile["train_limit"]),
        val_ids=stratified_subset(split["val"], profile["val_limit"]),
        device=device, epochs=args.epochs or profile["epochs"], seed=args.seed, warmup_steps=args.warmup_steps,
        target_acc=args.target_acc, repeats=args.repeats, infer_batch_sizes=tuple(args.infer_batch_sizes),
        infer_iters=profile["infer_iters"], workers=args.workers, progress=not args.no_progress)
    env = {**collect_env(device), "profile": args.profile, "data": str(root), "split": str(split_path),
           "command": " ".join(sys.argv)}
    env["hardware"] = hardware_key(env)
    _start_nvml(cfg, args, variants[0], env)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_env(run_dir, env)
    fingerprint = {k: env.get(k, "") for k in FINGERPRINT}
    print(f"{len(variants)} variants, profile {args.profile}, {len(cfg.train_ids)} train / {len(cfg.val_ids)} val "
          f"samples, {cfg.epochs} epochs on {device}; writing {run_dir}")
    try:
        failures = run_matrix(variants, cfg, run_dir, fingerprint, resume=bool(args.resume))
    except KeyboardInterrupt:
        print(f"\ninterrupted: the variants that finished are in {run_dir}; continue with --resume {run_dir}")
        return 130
    finally:
        if cfg.sampler is not None:
            cfg.sampler.stop()
    print(f"report: {run_dir / 'report.md'}" + (f" ({failures} variants failed)" if failures else ""))
    return 1 if failures else 0


def _start_nvml(cfg, args, probe_variant, env: dict) -> None:
    """Starts the sampler when NVML can watch this device; else records why its columns are empty."""
    from bench.nvml import NvmlSampler, nvml_unavailable_reason
    from bench.run import sampler_overhead
    reason = nvml_unavailable_reason(cfg.device)
    if reason:
        cfg.nvml_reason = reason
        env["nvml"] = f"n/a: {reason}"
        return
    cfg.sampler = NvmlSampler(cfg.device, args.nvml_period)
    cfg.idle_power_w = cfg.sampler.measure_idle_power(3.0)  # NVML power is a ~1 s average
    env["idle_power_w"] = cfg.idle_power_w
    env["nvml_overhead"] = sampler_overhead(cfg, probe_variant)
    cfg.sampler.start()


def cmd_loaders(args) -> int:
    from bench.loader_bench import run_loader_bench
    return run_loader_bench(args, _device(args), _run_dir(args.out, "loaders-"))  # made once data resolves


def cmd_report(args) -> None:
    from reports.markdown import write_report
    from reports.plots import write_plots
    run_dir = Path(args.run_dir)
    if not (run_dir / "results.csv").exists():
        raise SystemExit(f"error: {run_dir} has no results.csv (is it a run directory?)")
    print(write_report(run_dir))
    for path in write_plots(run_dir):
        print(path)


COMMANDS = {"data": cmd_data, "prepare": cmd_prepare, "split": cmd_split, "list": cmd_list, "all": cmd_all,
            "loaders": cmd_loaders, "report": cmd_report}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args) or 0
    except (DatasetError, FileExistsError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
