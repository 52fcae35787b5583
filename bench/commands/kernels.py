"""`bench kernels`: each Triton kernel timed against its torch reference, eager and torch.compile'd.

Timed with triton.testing.do_bench (median ms, L2 flushed between calls) on a CUDA device. On a
CPU the command skips: Triton runs there only through its interpreter, thousands of times slower
than any kernel, so a timing would measure the interpreter, and the kernels are used only on GPUs
(kernels.select). The tables it writes are what kernels.select.use_kernel reads.
"""

import itertools
import math
from dataclasses import dataclass
from functools import partial
from typing import Callable

import pandas as pd
import torch

from bench.options import check_new_folder, csv_list, positive, resolve_device
from kernels.select import KERNELS

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class Case:
    kernel: str
    case: str
    dtype: str
    layout: str
    batch_size: int
    fast: Callable  # the Triton path
    reference: Callable  # the torch path, run eagerly and compiled
    run: Callable  # run(fn) -> output: one timed call of fn on this case's tensors
    channels: int | None = None  # the input's channel width, where the kernel's use depends on it


def input_prep_cases(batch_sizes, device, size: int = 64):
    from kernels.input_prep import prepare_inputs, prepare_inputs_reference
    for batch, dtype, layout in itertools.product(batch_sizes, DTYPES, ("contiguous", "channels_last")):
        rgba = torch.randint(0, 256, (batch, size, size, 4), dtype=torch.uint8, device=device)
        depth = torch.rand(batch, size, size, device=device) * 60
        azimuth, zenith = torch.randn(batch, size, device=device), torch.randn(batch, size, device=device)
        options = dict(dtype=DTYPES[dtype], channels_last=layout == "channels_last")

        def run(fn, tensors=(rgba, depth, azimuth, zenith), options=options):
            return fn(*tensors, **options)
        yield Case("input_prep", f"uint8 rgba + depth {size}x{size}", dtype, layout, batch, prepare_inputs,
                   prepare_inputs_reference, run)


def pooling_shapes(size: int = 64) -> list[tuple[int, int]]:
    """(channels, side) of every pooling layer a variant may train: the seed's and the aligned
    widths (kernels.select matches a variant's widths against these rows)."""
    from bench.worker.trainer import pooled_widths
    from models import CHANNEL_LAYOUTS
    return sorted({(width, size >> block) for layout in CHANNEL_LAYOUTS
                   for block, width in enumerate(pooled_widths("maxpool", layout))})


def relu_maxpool_cases(batch_sizes, device, size: int = 64):
    """Every pooling layer of the seed-width and aligned embedders, forward and backward, in each
    precision a variant trains it in (fp32, and bf16 under autocast) and both memory formats."""
    from kernels.relu_maxpool import ReLUMaxPool, relu_maxpool_reference
    for batch, (channels, side), dtype, layout in itertools.product(batch_sizes, pooling_shapes(size), DTYPES,
                                                                    ("channels_last", "contiguous")):
        memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        x = torch.randn(batch, channels, side, side, device=device, dtype=DTYPES[dtype])
        x = x.contiguous(memory_format=memory_format).requires_grad_()
        grad = torch.randn(batch, channels, side // 2, side // 2, device=device, dtype=DTYPES[dtype])

        def run(fn, x=x, grad=grad):
            x.grad = None
            y = fn(x)
            y.backward(grad)
            return y
        yield Case("relu_maxpool", f"{channels}x{side}x{side} fwd+bwd", dtype, layout, batch, ReLUMaxPool.apply,
                   relu_maxpool_reference, run, channels)


CASES = {"input_prep": input_prep_cases, "relu_maxpool": relu_maxpool_cases}


def measure(case: Case, timer: Callable, device_name: str, compile: bool = True) -> dict:
    """One row: the kernel checked against eager, then all three timed."""
    torch.testing.assert_close(case.run(case.fast), case.run(case.reference), msg=lambda m: f"{case.kernel} {case.case}: {m}")
    kernel_ms = timer(lambda: case.run(case.fast))
    eager_ms = timer(lambda: case.run(case.reference))
    torch._dynamo.reset()  # every case compiled afresh, for its own shapes: no recompile limit, no dynamic shapes
    compiled = torch.compile(case.reference, dynamic=False) if compile else None
    compiled_ms = timer(lambda: case.run(compiled)) if compile else math.nan
    return {"kernel": case.kernel, "case": case.case, "dtype": case.dtype, "layout": case.layout,
            "channels": case.channels, "batch_size": case.batch_size, "device_name": device_name,
            "kernel_ms": kernel_ms, "eager_ms": eager_ms, "compiled_ms": compiled_ms,
            "speedup_vs_eager": eager_ms / kernel_ms, "speedup_vs_compiled": compiled_ms / kernel_ms, 
            "wins": bool(kernel_ms < eager_ms and kernel_ms < compiled_ms)}  # NaN: no win


def write_tables(rows: list[dict], out, title: str, note: str) -> str:
    from kernels.select import COLUMNS, winners
    table = pd.DataFrame(rows, columns=COLUMNS)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "kernels.csv", index=False)
    text = f"# {title}\n\n{note}\n"
    if rows:
        chosen = sorted(winners(table, rows[0]["device_name"]))
        shown = table.drop(columns=["device_name"]).astype(object)
        markdown = shown.where(shown.notna(), None).to_markdown(index=False, floatfmt=".4g", missingval="n/a")
        text += (f"\nUsed on this GPU (the kernel wins every case): {', '.join(chosen) or 'none'}. A kernel that wins "
                 "only some cases is used for the variants whose cases it all wins (their precision, memory format and "
                 f"channel widths, at every batch size timed). speedup = reference ms / kernel ms.\n\n{markdown}\n")
    (out / "kernels.md").write_text(text)
    return text


def add_parser(sub) -> None:
    p = sub.add_parser("kernels", help="time each Triton kernel against its torch reference, eager and compiled")
    p.add_argument("--kernel", type=csv_list(str, KERNELS), default=list(KERNELS))
    p.add_argument("--batch-size", type=csv_list(positive), default=[32, 512])
    p.add_argument("--device", help="cuda or cuda:N (default: cuda when available; on cpu the command skips)")
    p.add_argument("--out", help="folder for kernels.md and kernels.csv (default runs/kernels-<timestamp>)")


def run(args) -> int:
    import triton.testing
    from bench.parent.rundir import run_dir_path
    device = resolve_device(args.device)
    out = run_dir_path(args.out, "kernels-")
    check_new_folder(out)
    if device.type != "cuda":
        note = ("SKIP: no CUDA device. On a CPU Triton runs only through its interpreter "
                "(TRITON_INTERPRET=1), so a timing would measure the interpreter; the kernels keep the torch path.")
        print(note)
        write_tables([], out, f"Kernels on {device}", note)
        return 0
    name = torch.cuda.get_device_name(device)
    timer = partial(triton.testing.do_bench, return_mode="median")
    rows = []
    for kernel in args.kernel:
        for case in CASES[kernel](args.batch_size, device):
            rows.append(measure(case, timer, name))
            print(f"{kernel} {case.case} {case.dtype} {case.layout} b{case.batch_size}: kernel "
                  f"{rows[-1]['kernel_ms']:.4f} ms, eager {rows[-1]['eager_ms']:.4f}, compiled {rows[-1]['compiled_ms']:.4f}")
    print(write_tables(rows, out, f"Kernels on {name}", "do_bench median ms (L2 flushed between calls)."))
    return 0
