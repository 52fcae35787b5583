"""The checks `bench doctor` runs: one small function per path, each returning (status, reason).

A check proves that a path works on this machine for a few steps on tiny data; it measures
nothing worth keeping. `run_check` turns a check that raises into a FAIL with the error's one
line, so one broken path never hides the others. Paths this machine cannot run (CUDA-only
ones on a CPU, a loader that is not installed) SKIP with the reason.
"""

import functools
import importlib.util
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench.config import RunConfig
from bench.instruments import checks as known
from bench.instruments.env import collect_env, hardware_key
from bench.instruments.nvml import (MIN_COUNTER_PERIODS, NvmlSampler, nvml_unavailable_reason, pci_bus_id, summarize,
                                    update_period_s)
from bench.instruments.timing import Clock
from bench.worker.runner import error_line, measure
from bench.variants import COMPILE_MODES, Variant
from models import ARCHITECTURES, DOWNSAMPLES
from loaders import LOADERS, make_loader
from loaders.dataset import discover_ids, label_of
from loaders.generate import generate_dataset
from loaders.split import make_split

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"
PER_CLASS = 20  # 40 samples: 30 train (3 steps of BATCH), 10 val (one batch)
BATCH = 8
ARCH = "add"  # the smallest network (7M parameters)
DALI_HINT = 'NVIDIA DALI not installed: pip install -e ".[dali]" (pulls nvidia-dali-cuda130)'
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune", "step")
NVML_PERIOD_S = 0.02
ENERGY_WINDOW_S = 3.0  # the known-answer energy window: 30 counter periods of 100 ms


@dataclass
class Setup:
    """What every check sees: the device, the tiny data once made, and the runs made so far."""
    device: torch.device
    folder: Path  # where tiny data is generated
    workers: int = 2  # torch loader worker processes to try
    data: Path | None = None  # a dataset to take the samples from instead of generating them
    split: dict | None = None
    runs: dict = field(default_factory=dict)  # Variant -> measure() row, so inference reuses fp32
    energy_window: tuple | None = None  # (timeline, t0, t1) of the NVML known-answer run, made once

    def require_data(self) -> None:
        if self.split is None:
            raise RuntimeError("no tiny dataset (see the tiny dataset check)")

    def config(self) -> RunConfig:
        self.require_data()
        return RunConfig(data_root=str(self.data), train_ids=self.split["train"], val_ids=self.split["val"],
                         device=self.device, epochs=1, warmup_steps=1, infer_iters=2, workers=0, progress=False)

    def row(self, variant: Variant) -> dict:
        """measure()'s row for a variant, run once however many checks read it."""
        if variant not in self.runs:
            self.runs[variant] = measure(variant, self.config(), None).row
        return self.runs[variant]


def one_line(error: BaseException) -> str:
    """`Type: message` on one line, short enough for the table's reason cell."""
    return error_line(error, limit=300)


def run_check(check, setup: Setup) -> tuple[str, str, float]:
    """(status, reason, seconds); an exception is a FAIL with its one line, never a crash."""
    start = time.perf_counter()
    try:
        status, reason = check(setup)
    except Exception as error:
        status, reason = FAIL, one_line(error)
    return status, reason, time.perf_counter() - start


def _no_cuda(setup: Setup) -> str | None:
    return None if setup.device.type == "cuda" else f"needs a CUDA device (running on {setup.device})"


def environment(device: torch.device) -> dict:
    """collect_env's fingerprint plus what decides whether a run works: NVML, bf16, TF32."""
    env = collect_env(device)
    env["hardware"] = hardware_key(env)
    on_gpu = device.type == "cuda"
    nvml = nvml_unavailable_reason(device)
    env["nvml"] = f"reachable, GPU matched at PCI bus id {pci_bus_id(device)}" if nvml is None else f"n/a: {nvml}"
    if on_gpu:
        major, minor = torch.cuda.get_device_capability(device)
        env["compute_capability"] = f"{major}.{minor}"
        env["bf16"] = "yes" if torch.cuda.is_bf16_supported() else "no"
    else:
        env["bf16"] = "CPU autocast"
    env["tf32"] = (f"matmul precision {torch.get_float32_matmul_precision()}, "
                   f"cuDNN allow_tf32={torch.backends.cudnn.allow_tf32}")
    return env


def check_tiny_data(setup: Setup) -> tuple[str, str]:
    """PER_CLASS samples of each class: from --data, else generated into the temp folder."""
    start = time.perf_counter()
    if setup.data is None:
        setup.data = generate_dataset(setup.folder / "tiny", per_class=PER_CLASS, seed=42, progress=False)
        source = "generated"
    else:
        source = f"taken from {setup.data}"
    ids = discover_ids(setup.data)
    by_class = [[i for i in ids if label_of(i) == label][:PER_CLASS] for label in (0, 1)]
    if min(map(len, by_class)) < PER_CLASS:
        cubes, spheres = map(len, by_class)
        return FAIL, f"{setup.data} has {cubes} cubes and {spheres} spheres; {PER_CLASS} of each needed"
    chosen = by_class[0] + by_class[1]
    setup.split = make_split(chosen, val_fraction=0.25, seed=42)
    return PASS, f"{len(chosen)} samples {source} in {time.perf_counter() - start:.1f} s"


def _epoch(kind: str, setup: Setup, device: torch.device, workers: int):
    """One unshuffled epoch of the training split, concatenated: (rgb, lidar, label)."""
    loader = make_loader(kind, setup.data, setup.split["train"], batch_size=BATCH, shuffle=False,
                         drop_last=False, device=device, workers=workers)
    batches = list(loader)
    if len(batches) != len(loader):
        raise RuntimeError(f"{len(batches)} batches in an epoch, len() says {len(loader)}")
    return [torch.cat(parts) for parts in zip(*batches)]


def check_loader(setup: Setup, kind: str) -> tuple[str, str]:
    """An epoch on the device must hold the same samples as the torch loader gives on the CPU."""
    if kind == "dali" and not _installed("nvidia.dali"):
        return SKIP, DALI_HINT
    setup.require_data()
    rgb, lidar, label = _epoch(kind, setup, setup.device, setup.workers)
    ref_rgb, ref_lidar, ref_label = _epoch("torch", setup, torch.device("cpu"), 0)
    if rgb.device.type != setup.device.type:
        return FAIL, f"batches arrive on {rgb.device}, not {setup.device}"
    if rgb.shape != ref_rgb.shape or lidar.shape != ref_lidar.shape or not torch.equal(label.cpu(), ref_label):
        return FAIL, f"{len(label)} samples, shapes {tuple(rgb.shape)}, labels differ from the torch loader's"
    rgb_diff = (rgb.cpu() - ref_rgb).abs().max().item()
    lidar_diff = (lidar.cpu() - ref_lidar).abs().max().item()
    if not (rgb_diff <= 1e-6 and lidar_diff <= 1e-4 * max(ref_lidar.abs().max().item(), 1.0)):
        return FAIL, f"differs from the torch loader on CPU: max abs diff rgb {rgb_diff:.2g}, lidar {lidar_diff:.2g}"
    return PASS, (f"{len(label)} samples on {rgb.device}, equal to the torch loader on CPU "
                  f"(lidar max abs difference {lidar_diff:.1g})")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


def _variant(precision: str = "fp32", compile_mode: str = "none") -> Variant:
    return Variant(ARCH, precision=precision, compile_mode=compile_mode, batch_size=BATCH, loader="resident")


def _trained(row: dict) -> str | None:
    """Why a measured row is not a working run, or None when it is."""
    if row.get("status") != "ok":
        return f"status {row.get('status')}: {row.get('error', '')}"
    for key in ("val_loss", "train_samples_per_s"):
        if not math.isfinite(row.get(key, math.nan)):
            return f"{key} is {row.get(key)}"
    return None


def check_precision(setup: Setup, precision: str) -> tuple[str, str]:
    """A few training steps, validation and inference under this precision (fp32 or autocast)."""
    if precision == "fp16" and setup.device.type != "cuda":
        return SKIP, "fp16 autocast (with GradScaler) runs on CUDA only; on CPU the matrix uses bf16"
    if precision == "bf16" and setup.device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return SKIP, f"{torch.cuda.get_device_name(setup.device)} has no bf16; `bench all --amp` uses fp16 there"
    row = setup.row(_variant(precision))
    problem = _trained(row)
    if problem:
        return FAIL, problem
    return PASS, f"val_loss {row['val_loss']:.3f}, {row['train_samples_per_s']:,.0f} train samples/s"


def check_compile(setup: Setup, mode: str) -> tuple[str, str]:
    """torch.compile in this mode trains, validates and infers; CUDA-graph modes need CUDA."""
    if mode in CUDA_GRAPH_MODES and setup.device.type != "cuda":
        return SKIP, f"{mode} captures CUDA graphs: needs a CUDA device (running on {setup.device})"
    row = setup.row(_variant(compile_mode=mode))
    problem = _trained(row)
    if problem:
        return FAIL, problem
    return PASS, (f"compiled in {row['compile_s']:.1f} s: {row['compiled_graphs']} graphs, "
                  f"{row['graph_breaks']} graph breaks; val_loss {row['val_loss']:.3f}")


def check_inference(setup: Setup) -> tuple[str, str]:
    """The inference timing of the fp32 run (the same run check_precision made)."""
    row = setup.row(_variant())
    speed = row.get("infer_samples_per_s", math.nan)
    if not (math.isfinite(speed) and speed > 0):
        return FAIL, f"infer_samples_per_s is {speed} ({_trained(row) or 'no inference rows'})"
    return PASS, f"{speed:,.0f} samples/s at batch {BATCH}, p50 {row['infer_ms_p50']:.2f} ms"


def _busy(device: torch.device, seconds: float) -> int:
    """Matrix products on the device for about `seconds`; returns how many ran."""
    a = torch.randn(1024, 1024, device=device)
    count, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        a = torch.tanh(a @ a)
        torch.cuda.synchronize(device)
        count += 1
    return count


def check_cuda_events(setup: Setup) -> tuple[str, str]:
    """Clock's CUDA events time a matrix product on the device's own timeline."""
    reason = _no_cuda(setup)
    if reason:
        return SKIP, reason
    clock = Clock(setup.device)
    a = torch.randn(2048, 2048, device=setup.device)
    start = clock.mark()
    a @ a  # the work being timed
    end = clock.mark()
    clock.sync()
    ms = clock.elapsed_ms(start, end)
    if not (math.isfinite(ms) and ms > 0):
        return FAIL, f"a 2048^2 matrix product timed {ms} ms"
    return PASS, f"a 2048^2 matrix product: {ms:.3f} ms"


def check_nvml(setup: Setup) -> tuple[str, str]:
    """NvmlSampler records power, utilisation and energy while the GPU works."""
    reason = _no_cuda(setup)
    if reason:
        return SKIP, reason
    reason = nvml_unavailable_reason(setup.device)
    if reason:
        return FAIL, f"{reason}: energy, power and utilisation columns would be empty"
    with NvmlSampler(setup.device, period_s=NVML_PERIOD_S) as sampler:
        t0 = time.perf_counter()
        products = _busy(setup.device, 0.5)
        t1 = time.perf_counter()
    summary = summarize(sampler.timeline(), t0, t1, None, products)
    if summary["nvml_samples"] < 2:
        return FAIL, f"{summary['nvml_samples']} samples in 0.5 s (period 20 ms)"
    return PASS, (f"{summary['nvml_samples']} samples in 0.5 s, power {summary['power_w_mean']:.0f} W, "
                  f"utilisation {summary['gpu_util_mean']:.0f} %, energy from {summary['energy_source'] or 'n/a'}")


def _verdict(answer: known.KnownAnswer) -> tuple[str, str]:
    return (PASS if answer.passed else FAIL), answer.describe()


def check_step_timer(setup: Setup) -> tuple[str, str]:
    """The step timer on work of known duration (a busy loop on CPU, calibrated _sleep on a GPU)."""
    return _verdict(known.check_step_timer(setup.device))


def check_samples_per_s(setup: Setup) -> tuple[str, str]:
    """The runner's samples/s on steps of known data wait and compute."""
    return _verdict(known.check_samples_per_s(setup.device))


def check_flop_counter(setup: Setup) -> tuple[str, str]:
    """The FLOP counter against the hand count of every seed network: the doctor's network on the
    device, the others on the meta device (the count depends on shapes only)."""
    answers = [known.check_flop_counter(arch, downsample, setup.device if (arch, downsample) == (ARCH, "maxpool")
                                        else torch.device("meta"))
               for arch in ARCHITECTURES for downsample in DOWNSAMPLES]
    wrong = [a for a in answers if not a.passed]
    if wrong:
        return FAIL, "; ".join(a.describe() for a in wrong)
    first = answers[ARCHITECTURES.index(ARCH) * len(DOWNSAMPLES)]
    return PASS, (f"{len(answers)} seed networks counted exactly as by hand, e.g. {first.what}: "
                  f"{first.measured / 1e9:.4f} GFLOP")


def check_memory_peak(setup: Setup) -> tuple[str, str]:
    """The memory peak's rise over one allocation of known size."""
    answer = known.check_memory_peak(setup.device)
    if answer is None:
        return SKIP, ("this kernel does not reset a process's peak RSS (/proc/self/clear_refs): "
                      "CPU rows give the peak since their process started")
    return _verdict(answer)


def _energy_window(setup: Setup) -> tuple:
    """The GPU busy for a second (NVML power averages over up to one) and then for
    ENERGY_WINDOW_S under the sampler: (timeline, t0, t1), measured once for both NVML checks."""
    if setup.energy_window is None:
        with NvmlSampler(setup.device, period_s=NVML_PERIOD_S) as sampler:
            _busy(setup.device, 1.0)
            t0 = time.perf_counter()
            _busy(setup.device, ENERGY_WINDOW_S)
            t1 = time.perf_counter()
        setup.energy_window = (sampler.timeline(), t0, t1)
    return setup.energy_window


def _nvml_reason(setup: Setup) -> tuple[str, str] | None:
    """SKIP without CUDA, FAIL when NVML cannot see the GPU; None when the NVML checks can run."""
    reason = _no_cuda(setup)
    if reason:
        return SKIP, reason
    reason = nvml_unavailable_reason(setup.device)
    return (FAIL, f"{reason}: energy, power and utilisation columns would be empty") if reason else None


def check_counter_period(setup: Setup) -> tuple[str, str]:
    """How often the energy counter moves: the resolution every energy figure states."""
    verdict = _nvml_reason(setup)
    if verdict:
        return verdict
    timeline, t0, t1 = _energy_window(setup)
    period = update_period_s(timeline)
    if not math.isfinite(period):
        return FAIL, f"the energy counter (or power reading) moved fewer than 3 times in {t1 - t0 + 1:.0f} s"
    at_most = "at most " if period < 1.5 * NVML_PERIOD_S else ""
    return PASS, (f"moves every {at_most}{1000 * period:.0f} ms (sampled every {1000 * NVML_PERIOD_S:.0f} ms): "
                  f"energy windows of {MIN_COUNTER_PERIODS * period:.1f} s resolve to 4 %")


def check_nvml_energy(setup: Setup) -> tuple[str, str]:
    """The energy counter over a busy window against mean power x time over the same window."""
    verdict = _nvml_reason(setup)
    if verdict:
        return verdict
    timeline, t0, t1 = _energy_window(setup)
    answer = known.check_energy_counter(timeline, t0, t1, update_period_s(timeline))
    if answer is None:
        return SKIP, "no energy counter on this GPU: energy figures come from integrated power"
    return _verdict(answer)


def checks(skip_compile: bool = False) -> list[tuple[str, object]]:
    """(name, check) in the order they run: the fast ones first so a broken machine shows early."""
    compile_checks = [(f"compile {mode}", (lambda setup: (SKIP, "--skip-compile")) if skip_compile
                       else functools.partial(check_compile, mode=mode)) for mode in COMPILE_MODES[1:]]
    return [
        ("tiny dataset", check_tiny_data),
        *[(f"loader {kind}", functools.partial(check_loader, kind=kind)) for kind in LOADERS],
        ("CUDA events", check_cuda_events),
        ("NVML sampling", check_nvml),
        ("known answer: step timer", check_step_timer),
        ("known answer: samples/s", check_samples_per_s),
        ("known answer: FLOP counter", check_flop_counter),
        ("known answer: memory peak", check_memory_peak),
        ("known answer: NVML energy", check_nvml_energy),
        ("NVML counter period", check_counter_period),
        ("train fp32", functools.partial(check_precision, precision="fp32")),
        ("inference timing", check_inference),
        ("train bf16 autocast", functools.partial(check_precision, precision="bf16")),
        ("train fp16 autocast", functools.partial(check_precision, precision="fp16")),
        *compile_checks,
    ]
