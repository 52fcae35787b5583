"""`bench all`: train and measure every variant of the matrix into a run directory."""

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

from bench.errors import UsageError
from bench.options import (PROFILES, ROBUSTNESS_DEFAULT, add_data_args, add_matrix_args, check_new_folder, csv_list,
                           default_profile, matrix, non_negative, percent, positive, positive_number, resolve_device,
                           seed_value)
from bench.parent.rundir import run_dir_path

OVERHEAD_PROBE = "bench.parent.nvml_overhead:sampler_overhead"


def add_parser(sub) -> None:
    p = sub.add_parser("all", help="train and measure every variant of the matrix")
    add_data_args(p)
    add_matrix_args(p)
    p.add_argument("--epochs", type=positive)
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--out", help="run directory (default runs/<timestamp>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run: skip variants already done there")
    p.add_argument("--force", action="store_true", help="--out on an existing run: move the old run aside first")
    p.add_argument("--target-acc", type=percent, default=99.0, help="validation accuracy %% for time-to-target")
    p.add_argument("--repeats", type=positive, default=1, help="train each variant this many times")
    p.add_argument("--warmup-steps", type=positive, default=5, help="first steps excluded from timing")
    p.add_argument("--infer-batch-sizes", type=csv_list(positive), default=[], help="extra inference batch sizes")
    p.add_argument("--workers", type=non_negative, default=2, help="loader worker processes/threads")
    p.add_argument("--nvml-period", type=positive_number, default=0.02, help="NVML sampling period in seconds")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--kernels", metavar="PATH",
                   help="kernels.csv of `bench kernels` (or its folder): use each kernel that won there on this GPU")
    p.add_argument("--seeds", type=csv_list(seed_value), help="train each variant once per seed (init and shuffling; "
                   "--seed still fixes data and split), e.g. 42,43,44 (default: --seed)")
    p.add_argument("--robustness", action=argparse.BooleanOptionalAction, help="evaluate each trained network with "
                   "one sensor degraded (default: on in the seed and gpu profiles, off in quick)")
    p.add_argument("--nproc", type=positive, help="train data-parallel on N processes (GPUs) of this node: "
                   "starts torchrun; for several nodes run torchrun yourself (README)")
    p.add_argument("--scaling", action="store_true", help="with --nproc N: also train on one process into the "
                   "same run directory and report the scaling efficiency")
    p.add_argument("--isolate", action=argparse.BooleanOptionalAction, help="train each (variant, seed) in a fresh "
                   "worker process, so a crash or hang costs that variant only and its memory is its own "
                   "(default: on with CUDA, off on the CPU; README)")
    p.add_argument("--variant-timeout", type=float, metavar="SECONDS",
                   help="with isolation: a variant still running after SECONDS is killed and recorded as failed")


def run(args) -> int:
    from bench import distributed
    job = distributed.read_env()
    check_options(args, folders=job.rank == 0)  # rank 0 alone writes the run directory
    isolate = isolated(args, job)
    if args.variant_timeout is not None and not (isolate and args.variant_timeout > 0):
        raise UsageError(f"--variant-timeout {args.variant_timeout:g}: expected seconds above 0, and isolation "
                         "(--isolate): a variant in this process cannot be stopped")
    if args.nproc and not job.enabled:  # not under torchrun yet: start it
        return _launch_isolated(args) if isolate else _launch(args)
    from reports.results import table_warnings_as_lines
    try:
        with table_warnings_as_lines():  # a damaged row read by --resume: one line naming file and line
            return _run(args, job, _isolation(args, 1) if isolate else None)
    finally:
        distributed.shutdown()


def isolated(args, job) -> bool:
    """--isolate / --no-isolate; by default on wherever CUDA is used (a sticky CUDA error or the
    allocator's pools would reach every later variant) and off on the CPU (README: what a worker
    costs there). Under a torchrun the user started each rank is in-process, as before."""
    if job.enabled:
        if args.isolate:
            raise UsageError("--isolate under torchrun: run bench all --nproc N, which starts a torchrun group "
                             "per variant, instead of starting torchrun yourself")
        return False
    if args.isolate is not None:
        return args.isolate
    kind = args.device.split(":")[0] if args.device else ("cuda" if torch.cuda.is_available() else "cpu")
    return kind == "cuda"


def _isolation(args, nproc: int):
    from bench.parent.launcher import Isolation
    return Isolation(timeout_s=args.variant_timeout, nproc=nproc)


def _launch_isolated(args) -> int:
    """--nproc N with isolation: this process owns the run and starts one torchrun group of N
    ranks per variant; with --scaling first a one-process pass into the run directory, then the
    N-process pass resuming it, as _launch does."""
    from bench.distributed import DistEnv
    if not args.scaling:
        return _run(args, DistEnv(world_size=args.nproc), _isolation(args, args.nproc))
    run_dir = str(run_dir_path(args.resume or args.out))
    one = _run(argparse.Namespace(**{**vars(args), "out": run_dir}), DistEnv(), _isolation(args, 1))
    if one not in (0, 1):
        return one
    resumed = argparse.Namespace(**{**vars(args), "resume": run_dir, "force": False})
    return max(one, _run(resumed, DistEnv(world_size=args.nproc), _isolation(args, args.nproc)))


def check_options(args, folders: bool = True) -> None:
    """Refuses options that contradict each other or name an unusable folder (with `folders`),
    before the device, the data or any folder is touched; argparse types check each value."""
    if args.scaling and (args.nproc or 0) < 2:
        raise UsageError("--scaling needs --nproc N with N >= 2 (it compares N processes with one)")
    if args.resume and args.force:
        raise UsageError("--force moves a run aside and --resume continues it: pass one of them")
    if args.resume and args.out and Path(args.out) != Path(args.resume):
        raise UsageError(f"--out {args.out} and --resume {args.resume}: a resumed run is written where it is; "
                         "pass one of them")
    if not folders:
        return
    if args.resume:
        if not (Path(args.resume) / "results.csv").is_file():
            raise UsageError(f"--resume {args.resume}: no results.csv there (is it a run directory?)")
    else:
        check_new_folder(run_dir_path(args.out))


def check_batch_sizes(variants: list, cfg) -> None:
    """Refuses a training or inference batch larger than the split it draws from (each rank's
    share under torchrun): every variant of that size would fail, or skip the inference batch,
    after the data check. Checked as soon as the split is known, before the data check."""
    per_rank = {name: len(ids) // cfg.world_size for name, ids in (("train", cfg.train_ids), ("val", cfg.val_ids))}
    ranks = f" per rank of {cfg.world_size}" if cfg.world_size > 1 else ""
    for name, samples in per_rank.items():
        too_big = sorted({v.batch_size for v in variants if v.batch_size > samples})
        if too_big:
            raise UsageError(f"--batch-size {','.join(map(str, too_big))}: larger than the {name} split's {samples} "
                             f"samples{ranks}; choose a smaller batch or more data")
    too_big = sorted(b for b in cfg.infer_batch_sizes if b > per_rank["val"])
    if too_big:
        raise UsageError(f"--infer-batch-sizes {','.join(map(str, too_big))}: larger than the val split's "
                         f"{per_rank['val']} samples{ranks} (inference is timed on validation batches)")


def _launch(args) -> int:
    """--nproc N: torchrun on N processes; with --scaling first one process into the run
    directory, then N processes resuming it (rows are keyed on world_size, so none is skipped)."""
    from bench.distributed import launch
    argv = [a for a in sys.argv[1:] if a != "--scaling"]  # the children run `bench all` as given
    if not args.scaling:
        return launch(args.nproc, argv)
    run_dir = run_dir_path(args.resume or args.out)
    one = launch(1, argv if args.resume else argv + ["--out", str(run_dir)])
    if one not in (0, 1):  # 1: some variants failed, the run directory is still good
        return one
    resumed = [a for a in argv if a != "--force"]  # the first launch moved an old run aside already
    return max(one, launch(args.nproc, resumed + ["--resume", str(run_dir)]))


def _device(args, job) -> torch.device:
    """--device as given; under torchrun cuda:LOCAL_RANK (or the CPU), joined to the process group."""
    from bench.distributed import read_env
    if not read_env().enabled:  # also the parent of isolated --nproc N: its workers join the group
        return resolve_device(args.device)
    from bench.distributed import init
    kind = torch.device(args.device).type if args.device else ("cuda" if torch.cuda.is_available() else "cpu")
    return init(job, kind)


def _data(args, rank0: bool):
    """(root, split, split path or None for a new split, saved after the data check): rank 0
    alone finds or generates the data and split (one writer), the other ranks receive them
    (torchrun's nodes must see the same --data path)."""
    from bench.parent.datasource import resolve_data, resolve_split
    from bench.distributed import broadcast_from_rank0
    found = None
    if rank0:
        root, ids = resolve_data(args.data, args.per_class, args.seed, progress=not args.no_progress)
        split, split_path = resolve_split(root, ids, args.split, args.seed)
        found = (str(root), split, split_path and str(split_path))
    return broadcast_from_rank0(found)


def _run(args, job, isolation=None) -> int:
    """The run in this process: `job` is its torchrun place, or the world an isolated --nproc N
    plans for its workers (this process is then rank 0 of N without a process group)."""
    from bench.config import RunContext
    from bench.distributed import is_rank0
    from bench.parent.matrix import run_matrix
    from bench.parent.rundir import code_version, open_run_dir, sigterm_as_interrupt, split_fingerprint
    from loaders.check import check_dataset
    from reports.markdown import write_report
    from reports.results import FINGERPRINT

    device = _device(args, job)
    rank0 = is_rank0()
    sigterm_as_interrupt()
    amp_dtype = args.amp_dtype or "bf16"
    if args.amp and amp_dtype == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        print(f"{torch.cuda.get_device_name(device)} has no bf16: --amp uses fp16 (with GradScaler)")
        amp_dtype = "fp16"
    profile_name = args.profile or default_profile(device.type)
    variants = matrix(args, profile_name, amp_dtype)
    if args.kernels:
        announce_kernels(args.kernels, device)
    run_dir = run_dir_path(args.resume or args.out)
    root, split, split_path = _data(args, rank0)
    cfg = _config(args, job, device, profile_name, root, split)
    check_batch_sizes(variants, cfg)
    seeds = list(dict.fromkeys(args.seeds or [args.seed]))
    ctx = RunContext()
    if not rank0:  # trains its shard; rank 0 checks the data, writes and reports
        return 1 if run_matrix(variants, cfg, run_dir, {}, resume=bool(args.resume), ctx=ctx, seeds=seeds) else 0
    try:
        check = check_dataset(root, cfg.train_ids + cfg.val_ids, progress=cfg.progress)
    except KeyboardInterrupt:
        print("\ninterrupted during the data check, before the run started; nothing was written", file=sys.stderr)
        return 130
    check.raise_if_broken()  # a DatasetError: exit code 2 (bench/cli.py), before any training
    if split_path is None:  # a new split goes into the data folder only once its data passed
        from bench.parent.datasource import store_split
        split_path = str(store_split(split, Path(root), fallback_dir=run_dir))
    settings = {"epochs": cfg.epochs, "profile": profile_name, "seed": args.seed, "data": check.fingerprint,
                "split": split_fingerprint(split), "code": code_version()}
    env = _env(device, job, profile_name, root, split_path)
    _start_nvml(replace(cfg, world_size=1, rank=0), ctx, args.nvml_period, variants[0], env,  # rank 0 alone
                nvml_devices(device, job.world_size), isolation is not None)
    if ctx.sampler is not None:  # each variant's headline energy gets a window the counter resolves
        from bench.instruments.nvml import energy_window_s
        cfg = replace(cfg, energy_window_s=energy_window_s(ctx.sampler.counter_period_s))
    plan = [{"variant": v.name, "seed": seed, "world_size": job.world_size} for seed in seeds for v in variants]
    run_lock = open_run_dir(run_dir, settings, env, resume=bool(args.resume), force=args.force,  # noqa: F841
                            plan=plan)  # held until run() returns
    try:
        fingerprint = {k: env.get(k, "") for k in FINGERPRINT}
        print(f"{len(variants)} variants x {len(seeds)} seeds, profile {profile_name}, {len(cfg.train_ids)} train / "
              f"{len(cfg.val_ids)} val samples, {cfg.epochs} epochs on {device}"
              + (f" x {job.world_size} processes" if job.enabled else "")
              + (", each variant in a fresh process" if isolation else "") + f"; writing {run_dir}")
        failures = run_matrix(variants, cfg, run_dir, fingerprint, resume=bool(args.resume), ctx=ctx, seeds=seeds,
                              isolation=isolation)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the folder holds a valid report and can be resumed
        write_report(run_dir)
        print(f"\ninterrupted: the variants that finished are in {run_dir}; continue with --resume {run_dir}")
        return 130
    finally:
        if ctx.sampler is not None:
            ctx.sampler.stop()
    print(f"report: {run_dir / 'report.md'}" + (f" ({failures} variants failed)" if failures else ""))
    return 1 if failures else 0


def _config(args, job, device: torch.device, profile_name: str, root: str, split: dict):
    """The run's frozen settings: the flags, with the profile filling what they leave out."""
    from bench.config import RunConfig
    from loaders.split import stratified_subset
    profile = PROFILES[profile_name]
    return RunConfig(
        data_root=root,
        train_ids=stratified_subset(split["train"], profile["train_limit"]),
        val_ids=stratified_subset(split["val"], profile["val_limit"]),
        device=device, epochs=args.epochs or profile["epochs"], seed=args.seed, warmup_steps=args.warmup_steps,
        target_acc=args.target_acc, repeats=args.repeats, infer_batch_sizes=tuple(args.infer_batch_sizes),
        infer_iters=profile["infer_iters"], workers=args.workers, progress=job.rank == 0 and not args.no_progress,
        reference_steps=profile["reference_steps"] if job.world_size == 1 else 0,  # the plain loop is one process's
        robustness=ROBUSTNESS_DEFAULT[profile_name] if args.robustness is None else args.robustness,
        world_size=job.world_size, rank=job.rank, kernels=args.kernels)


def _env(device: torch.device, job, profile_name: str, root: str, split_path: str) -> dict:
    """env.json: the schema version, the hardware and software fingerprint and how the run was made."""
    from bench.instruments.env import collect_env, hardware_key
    from reports.results import SCHEMA_VERSION
    env = {"schema_version": SCHEMA_VERSION, **collect_env(device), "profile": profile_name, "data": root,
           "split": split_path, "command": " ".join(sys.argv), "world_size": job.world_size}
    env["hardware"] = hardware_key(env)
    if device.type == "cuda" and job.enabled:
        from bench.distributed import node_gpus
        env["node_gpus"] = node_gpus()
    return env


def announce_kernels(path: str, device: torch.device) -> None:
    """Reads and checks the --kernels table before any training, on a CPU too (where no kernel is
    used, so a junk file would otherwise pass unread), and says which kernels this device will use."""
    from kernels.select import COLUMNS, KERNELS, use_kernel
    table = Path(path) / "kernels.csv" if Path(path).is_dir() else Path(path)
    expected = "expected the kernels.csv that `python -m bench kernels --out DIR` writes"
    if not table.is_file():
        where = "no kernels.csv in that folder" if Path(path).is_dir() else "no such file or folder"
        raise UsageError(f"--kernels {path}: {where} ({expected})")
    try:
        columns = set(pd.read_csv(table, nrows=0).columns)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise UsageError(f"--kernels {table}: not a CSV table ({str(error).strip().splitlines()[0]}; {expected})") from None
    missing = [c for c in COLUMNS if c not in columns]
    if missing:
        raise UsageError(f"--kernels {table}: lacks {len(missing)} of the {len(COLUMNS)} columns of a kernels table, "
                         f"e.g. {', '.join(missing[:3])} ({expected})")
    used = [kernel for kernel in KERNELS if use_kernel(kernel, device, path)]
    print(f"--kernels {path}: " + (f"{', '.join(used)} used where they apply" if used else
                                   f"no kernel beat eager and torch.compile there on {device}; the torch path runs"))


def nvml_devices(device: torch.device, world_size: int) -> list[torch.device]:
    """The GPUs NVML samples: under torchrun on CUDA every GPU of this node the job uses
    (cuda:0 .. cuda:LOCAL_WORLD_SIZE-1), so energy is the node's; else the run's device."""
    if device.type != "cuda" or world_size <= 1:
        return [device]
    local = min(torch.cuda.device_count(), int(os.environ.get("LOCAL_WORLD_SIZE", world_size)))
    return [torch.device("cuda", index) for index in range(local)]


def _start_nvml(cfg, ctx, period_s: float, probe_variant, env: dict, devices: list[torch.device],
                isolate: bool = False) -> None:
    """Starts the sampler when NVML can watch these devices; else records why its columns are empty.
    The overhead probe trains, so with isolation it runs in a worker."""
    from bench.instruments.nvml import NvmlSampler, nvml_unavailable_reason
    from bench.parent import nvml_overhead
    from bench.parent.launcher import run_in_worker
    reason = next(filter(None, map(nvml_unavailable_reason, devices)), None)
    if reason:
        ctx.nvml_reason = reason
        env["nvml"] = f"n/a: {reason}"
        return
    ctx.sampler = NvmlSampler(devices, period_s)
    ctx.idle_power_w = ctx.sampler.measure_idle_power(3.0)  # NVML power is a ~1 s average
    env["idle_power_w"] = ctx.idle_power_w
    env["nvml_counter_period_s"] = ctx.sampler.counter_period_s  # measured in the same idle window
    probe = (cfg, devices, period_s, probe_variant)
    env["nvml_overhead"] = run_in_worker(OVERHEAD_PROBE, *probe) if isolate else nvml_overhead.sampler_overhead(*probe)
    ctx.sampler.start()
