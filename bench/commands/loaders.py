"""`bench loaders`: each loader timed over full epochs of the same split, as ready device batches."""

import time

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from bench.parent.datasource import resolve_data, resolve_split, store_split
from bench.instruments import memory
from bench.instruments.timing import Clock, percentiles
from bench.errors import UsageError
from bench.options import add_data_args, check_new_folder, csv_list, non_negative, positive, resolve_device
from loaders import LOADERS
from loaders import make_loader
from loaders.split import stratified_subset
from reports.loaders_report import with_ratio, write_loaders_report
from reports.results import LOADER_COLUMNS, LOADERS_CSV, append_rows, write_atomically


def time_loader(kind: str, root, ids, batch_size: int, workers: int, device: torch.device, epochs: int,
                **options) -> dict:
    """First epoch (construction, decoding, caching) timed on its own, then `epochs` steady epochs."""
    clock = Clock(device)
    host_peak_was_reset = memory.reset_host_peak()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    loader = make_loader(kind, root, ids, batch_size=batch_size, shuffle=True, drop_last=True, device=device,
                         workers=workers, **options)
    for _ in loader:
        pass
    clock.sync()
    first_epoch_s = time.perf_counter() - start
    batch_ms, samples = [], 0
    for _ in tqdm(range(epochs), desc=kind, unit="epoch", leave=False):
        marks = [clock.mark()]
        for _, _, label in loader:
            marks.append(clock.mark())
            samples += len(label)
        clock.sync()
        batch_ms += [clock.elapsed_ms(a, b) for a, b in zip(marks, marks[1:])]
    batch_ms = np.asarray(batch_ms)
    q = percentiles(batch_ms)
    return {"loader": kind, "form": loader.form, "batch_size": batch_size, "workers": workers, "device": str(device),
            "epochs": epochs, "samples": samples, "samples_per_s": samples / (batch_ms.sum() / 1000),
            "batch_ms_p50": q["p50"], "batch_ms_p99": q["p99"], "first_epoch_s": first_epoch_s,
            "host_peak_rss_mb": memory.host_peak_mb() if host_peak_was_reset else None,  # else an earlier loader's
            "torch_device_peak_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
            "status": "ok"}


def _loader_forms(kinds: list[str], root) -> list[tuple[str, dict]]:
    """Each loader once; DALI from PNG and, when `bench prepare` made them, from the prepared arrays."""
    from loaders.prepare import find_prepared
    forms = []
    for kind in kinds:
        if kind != "dali":
            forms.append((kind, {}))
        else:
            forms.append((kind, {"prepared": False}))
            if find_prepared(root) is not None:
                forms.append((kind, {"prepared": True}))
    return forms


def add_parser(sub) -> None:
    p = sub.add_parser("loaders", help="time each loader over full epochs")
    add_data_args(p)
    p.add_argument("--loader", type=csv_list(str, LOADERS), default=list(LOADERS))
    p.add_argument("--batch-size", type=positive, default=32)
    p.add_argument("--workers", type=non_negative, default=2)
    p.add_argument("--epochs", type=positive, default=2, help="timed epochs after the first")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--out", help="run directory (default runs/loaders-<timestamp>)")
    p.add_argument("--subset", type=positive, help="time only this many training samples")


def run(args) -> int:
    from bench.parent.rundir import run_dir_path
    device = resolve_device(args.device)
    run_dir = run_dir_path(args.out, "loaders-")  # made once data resolves
    check_new_folder(run_dir)
    root, ids = resolve_data(args.data, args.per_class, args.seed)
    split, split_path = resolve_split(root, ids, args.split, args.seed)
    if split_path is None:
        store_split(split, root, fallback_dir=run_dir)
    train_ids = stratified_subset(split["train"], args.subset)
    if args.batch_size > len(train_ids):
        raise UsageError(f"--batch-size {args.batch_size}: larger than the {len(train_ids)} training samples timed "
                         "(every epoch would be empty); choose a smaller batch, or a larger --subset")
    run_dir.mkdir(parents=True, exist_ok=True)
    print(f"timing {', '.join(args.loader)} over {args.epochs} epochs of {len(train_ids)} samples, batch "
          f"{args.batch_size}, {args.workers} workers, on {device}; writing {run_dir}")
    rows, failures = [], 0
    for kind, options in _loader_forms(args.loader, root):
        try:
            row = time_loader(kind, root, train_ids, args.batch_size, args.workers, device, args.epochs, **options)
        except (ImportError, RuntimeError, ValueError) as error:  # e.g. DALI not installed: the others still run
            failures += 1
            row = {"loader": kind, "batch_size": args.batch_size, "workers": args.workers, "device": str(device),
                   "status": "failed", "error": (str(error).strip().splitlines() or [type(error).__name__])[0]}
            print(f"{kind}: failed: {row['error']}")
        rows.append(row)
        append_rows(run_dir / LOADERS_CSV, [row], LOADER_COLUMNS)
    write_atomically(run_dir / LOADERS_CSV, with_ratio(pd.DataFrame(rows)).to_csv(index=False))
    print(write_loaders_report(run_dir).read_text())
    return 1 if failures else 0
