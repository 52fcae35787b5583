"""Background NVML sampler and the per-window summary of what it recorded.

A daemon thread polls the GPU (under torchrun: every GPU of the node the job uses) every
`period_s` and stamps each sample with time.perf_counter(), so the runner can cut the timeline
at its own perf_counter marks (one window per variant and phase) and call `summarize` on each
window. `summarize` is a pure function of a recorded timeline, so the arithmetic is tested
without a GPU. The energy counter moves only every period (about 100 ms on recent GPUs), so
every energy figure carries its uncertainty from that period (energy_uncertainty_j), measured
in the idle window before a run (update_period_s), and is flagged when it is not resolved.
"""

import math
import threading
import time

import numpy as np
import pandas as pd
import pynvml
import torch

from reports.results import write_atomically

COLUMNS = [
    "time",
    "gpu_util",
    "mem_util",
    "power_w",
    "sm_clock_mhz",
    "temp_c",
    "clock_event_reasons",
    "energy_mj",
    "mem_used_mb",
]

# Clock-event reasons that mean the clocks were held down by a limit. GPU idle (0x1) and
# applications/user clock settings (0x2), sync boost and display settings are not throttling.
# The ClocksThrottleReason names exist in every nvidia-ml-py >= 12; the newer ClocksEventReason
# names carry the same values.
THROTTLE_MASK = (
    pynvml.nvmlClocksThrottleReasonSwPowerCap  # 0x04
    | pynvml.nvmlClocksThrottleReasonHwSlowdown  # 0x08
    | pynvml.nvmlClocksThrottleReasonSwThermalSlowdown  # 0x20
    | pynvml.nvmlClocksThrottleReasonHwThermalSlowdown  # 0x40
    | pynvml.nvmlClocksThrottleReasonHwPowerBrakeSlowdown  # 0x80
)
THROTTLED_SHARE_LIMIT = 0.05
# An energy figure is resolved when its uncertainty (energy_uncertainty_j) is at most that of one
# window MIN_COUNTER_PERIODS counter periods long: 2 / 50 = 4 %. Shorter ones are flagged.
MIN_COUNTER_PERIODS = 50
# The longest energy window a variant trains for (energy_window_s): 50 periods of a counter that
# moves at most every 0.4 s; a slower counter's figure is flagged rather than the run made longer.
MAX_ENERGY_WINDOW_S = 20.0
# How far the energy counter may stray from mean power x time over the same steady window before
# `bench doctor` calls it wrong (beyond its resolution): NVML power is itself an average over up to
# a second, and on A100/H100 the counter integrates only part of each period (Yang et al., SC24).
ENERGY_TOLERANCE = 0.10
# The CUDA index of each row's GPU; only a timeline of several GPUs has it, so a one-GPU
# nvml.csv keeps COLUMNS alone (as older run directories do).
GPU = "gpu"

_MIB = 2**20


def nvml_unavailable_reason(device: torch.device) -> str | None:
    """Why NVML cannot be sampled for `device`, or None when it can (checked before a run)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return "no CUDA device"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as error:
        return f"pynvml could not initialise: {error}"
    try:
        handle_for(device)
    except pynvml.NVMLError as error:
        return f"no NVML device at PCI bus id {pci_bus_id(device)}: {error}"
    finally:
        pynvml.nvmlShutdown()
    return None


def pci_bus_id(device: torch.device) -> str:
    """The device's PCI id as NVML writes it; CUDA and NVML indices differ under
    CUDA_VISIBLE_DEVICES, the bus id does not."""
    props = torch.cuda.get_device_properties(device)
    return f"{props.pci_domain_id:08x}:{props.pci_bus_id:02x}:{props.pci_device_id:02x}.0"


def handle_for(device: torch.device):
    """The NVML handle of the physical GPU behind a torch CUDA device."""
    return pynvml.nvmlDeviceGetHandleByPciBusId(pci_bus_id(device))


def _clock_event_reasons(handle) -> int:
    """Current clock-event bitmask; falls back to the pre-535 driver name of the same call."""
    try:
        return pynvml.nvmlDeviceGetCurrentClocksEventReasons(handle)
    except (AttributeError, pynvml.NVMLError_FunctionNotFound):
        return pynvml.nvmlDeviceGetCurrentClocksThrottleReasons(handle)


def _field(read) -> float:
    """One field read; any failure becomes NaN so one unsupported field never stops sampling."""
    try:
        return float(read())
    except Exception:
        return math.nan


def _read_sample(handle, now: float | None = None) -> dict:
    """One row of the timeline, stamped `now` (the tick's time) or when the reads begin."""
    now = time.perf_counter() if now is None else now
    try:
        util = pynvml.nvmlDeviceGetUtilizationRates(handle)
        gpu_util, mem_util = float(util.gpu), float(util.memory)
    except Exception:
        gpu_util = mem_util = math.nan
    return {
        "time": now,
        "gpu_util": gpu_util,
        "mem_util": mem_util,
        "power_w": _field(lambda: pynvml.nvmlDeviceGetPowerUsage(handle) / 1000),
        "sm_clock_mhz": _field(lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM)),
        "temp_c": _field(
            lambda: pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU)
        ),
        "clock_event_reasons": _field(lambda: _clock_event_reasons(handle)),
        "energy_mj": _field(lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)),
        "mem_used_mb": _field(lambda: pynvml.nvmlDeviceGetMemoryInfo(handle).used / _MIB),
    }


def label_samples(timeline: pd.DataFrame, marks: pd.DataFrame) -> pd.DataFrame:
    """The timeline plus a `marker` column: the latest mark at or before each sample ("" before
    the first), so nvml.csv can be split per variant and phase without the marks file."""
    labelled = timeline.sort_values("time", kind="stable").reset_index(drop=True)
    if marks.empty or labelled.empty:
        return labelled.assign(marker="")
    ordered = marks.sort_values("time").rename(columns={"label": "marker"})
    labelled = pd.merge_asof(labelled, ordered, on="time", direction="backward")
    labelled["marker"] = labelled["marker"].fillna("")
    return labelled


class NvmlSampler:
    """Samples one GPU, or several, on a daemon thread while running; usable as a context manager.

    `devices` is one torch device or a list of them. Each tick reads every GPU in turn and
    stamps their rows with the same tick time; with several GPUs each row also carries its
    CUDA index in a `gpu` column. It can be started and stopped repeatedly; samples and marks
    accumulate across runs of the same instance (their perf_counter times keep them apart).
    Use a new instance for a fresh timeline.
    """

    def __init__(self, devices, period_s: float = 0.02):
        listed = devices if isinstance(devices, (list, tuple)) else [devices]
        self.devices = [torch.device(device) for device in listed]
        if not self.devices:
            raise ValueError("NvmlSampler needs at least one device")
        self.period_s = period_s
        self._rows: list[dict] = []
        self._marks: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.counter_period_s = math.nan  # measured by measure_idle_power

    def start(self) -> "NvmlSampler":
        """Initialise NVML, find each device's handle and begin sampling."""
        if self._thread is not None:
            raise RuntimeError("NvmlSampler is already running")
        for device in self.devices:
            reason = nvml_unavailable_reason(device)
            if reason is not None:
                raise RuntimeError(f"NVML sampling unavailable on {device}: {reason}")
        pynvml.nvmlInit()
        try:
            handles = {device.index: handle_for(device) for device in self.devices}
        except pynvml.NVMLError:
            pynvml.nvmlShutdown()
            raise
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, args=(handles,), name="nvml-sampler", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread and release NVML; a no-op when not running."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        pynvml.nvmlShutdown()

    def __enter__(self) -> "NvmlSampler":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self, handles: dict) -> None:
        """Sample every GPU on a fixed schedule; if a tick runs late, restart the schedule from now."""
        several = len(handles) > 1
        next_time = time.perf_counter()
        while not self._stop.is_set():
            now = time.perf_counter()
            rows = [_read_sample(handle, now) | ({GPU: float(gpu)} if several else {})
                    for gpu, handle in handles.items()]
            with self._lock:
                self._rows.extend(rows)
            next_time = max(next_time + self.period_s, time.perf_counter())
            self._stop.wait(max(0.0, next_time - time.perf_counter()))

    def mark(self, label: str, at: float | None = None) -> None:
        """Record a perf_counter time (now, or `at`: a worker's, the same clock) and label so the
        timeline can be split per variant/phase."""
        with self._lock:
            self._marks.append((time.perf_counter() if at is None else at, label))

    def timeline(self) -> pd.DataFrame:
        """All samples so far, one row per GPU and tick: columns COLUMNS, and GPU with several GPUs."""
        columns = COLUMNS + [GPU] if len(self.devices) > 1 else COLUMNS
        with self._lock:
            return pd.DataFrame(list(self._rows), columns=columns, dtype=float)

    def marks(self) -> pd.DataFrame:
        """All marks so far, columns time and label."""
        with self._lock:
            return pd.DataFrame(list(self._marks), columns=["time", "label"])

    def measure_idle_power(self, seconds: float = 1.0) -> float:
        """Mean power over a quiet window, the baseline for energy above idle; the same samples
        measure the energy counter's update period (self.counter_period_s, see update_period_s).
        Call it before the run; it starts the sampler for the window if it is not already running."""
        running = self._thread is not None
        if not running:
            self.start()
        try:
            self.mark("idle")
            t0 = time.perf_counter()
            time.sleep(seconds)
            t1 = time.perf_counter()
        finally:
            if not running:
                self.stop()
        samples = self.timeline()
        in_window = samples[(samples["time"] >= t0) & (samples["time"] <= t1)]
        self.counter_period_s = update_period_s(in_window)
        return float(_tick_power(in_window).mean()) if len(in_window) else math.nan

    def to_csv(self, path) -> None:
        """Write the whole timeline with its `marker` column (a run's nvml.csv)."""
        write_atomically(path, label_samples(self.timeline(), self.marks()).to_csv(index=False))


def per_gpu(timeline: pd.DataFrame) -> list[pd.DataFrame]:
    """The timeline of each GPU, by CUDA index; a timeline without a GPU column (one GPU, or an
    older nvml.csv) is one GPU's."""
    if GPU not in timeline or timeline[GPU].nunique() <= 1:
        return [timeline]
    return [rows for _, rows in timeline.groupby(GPU, sort=True)]


def _tick_power(window: pd.DataFrame) -> pd.Series:
    """The power of all sampled GPUs together at each tick (their rows share the tick time);
    NaN at a tick where any GPU's power did not read."""
    power = window.groupby("time")["power_w"]
    total = power.sum()
    total[power.count() < power.size()] = math.nan
    return total


def _energy(window: pd.DataFrame) -> tuple[float, float, str]:
    """Energy in J between the first and last usable sample, that span in s, and the source:
    the device counter where it reads in the window, else trapezoidal integration of power."""
    counter = window[np.isfinite(window["energy_mj"])]
    if len(counter) >= 2:
        span = counter["time"].iloc[-1] - counter["time"].iloc[0]
        joules = (counter["energy_mj"].iloc[-1] - counter["energy_mj"].iloc[0]) / 1000
        return float(joules), float(span), "counter"
    power = window[np.isfinite(window["power_w"])]
    if len(power) >= 2:
        t = power["time"].to_numpy()
        p = power["power_w"].to_numpy()
        joules = np.sum((p[1:] + p[:-1]) / 2 * np.diff(t))
        return float(joules), float(t[-1] - t[0]), "integrated_power"
    return math.nan, math.nan, ""


def _throttled_share(window: pd.DataFrame) -> float:
    """Fraction of ticks where any GPU had a real throttle bit set (idle and clock-setting bits
    ignored)."""
    read = window[np.isfinite(window["clock_event_reasons"])]
    if read.empty:
        return math.nan
    throttled = (read["clock_event_reasons"].astype(np.int64) & THROTTLE_MASK) != 0
    return float(throttled.groupby(read["time"]).any().mean())


def _cumulative_joules(timeline: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, str] | None:
    """(times, joules since the first sample, source) over a whole timeline: the energy counter
    where it reads, else the running trapezoidal integral of power; None when neither does."""
    counter = timeline[np.isfinite(timeline["energy_mj"])]
    if len(counter) >= 2:
        mj = counter["energy_mj"].to_numpy(float)
        return counter["time"].to_numpy(float), (mj - mj[0]) / 1000, "counter"
    power = timeline[np.isfinite(timeline["power_w"])]
    if len(power) >= 2:
        t, p = power["time"].to_numpy(float), power["power_w"].to_numpy(float)
        return t, np.concatenate([[0.0], np.cumsum((p[1:] + p[:-1]) / 2 * np.diff(t))]), "integrated_power"
    return None


def _window_joules(timeline: pd.DataFrame, t0: float, t1: float) -> tuple[float, str]:
    """Energy of one window: measured between its first and last sample and scaled to its
    length; a window too short to hold two samples is read off the whole timeline's cumulative
    energy, interpolated at t0 and t1. NaN where the timeline does not cover the window."""
    inside = timeline[(timeline["time"] >= t0) & (timeline["time"] <= t1)]
    measured_j, span, source = _energy(inside)
    if span > 0:
        return measured_j * (t1 - t0) / span, source
    cumulative = _cumulative_joules(timeline)
    if cumulative is None or t0 < cumulative[0][0] or t1 > cumulative[0][-1]:
        return math.nan, ""
    times, joules, source = cumulative
    return float(np.interp(t1, times, joules) - np.interp(t0, times, joules)), source


def window_energy(timeline: pd.DataFrame, windows: list[tuple[float, float]]) -> tuple[float, str]:
    """Energy in J summed over windows (perf_counter seconds) and over GPUs, and its source; NaN
    when any window of any GPU cannot be measured or there are none."""
    parts = [_window_joules(gpu[COLUMNS].astype(float), t0, t1)
             for gpu in per_gpu(timeline) for t0, t1 in windows]
    if not parts or any(math.isnan(j) for j, _ in parts):
        return math.nan, ""
    return float(sum(j for j, _ in parts)), "+".join(sorted({s for _, s in parts}))


def update_period_s(timeline: pd.DataFrame) -> float:
    """How often the reading that energy comes from moves: the energy counter where it reads, else
    the power reading. The mean time between its changes (first to last change over their count,
    so the sampler's own period averages out), the slowest GPU's; NaN with under 3 changes. A
    counter that moves at every sample reads as the sampling period: its period is at most that."""
    periods = []
    for gpu in per_gpu(timeline):
        column = "energy_mj" if np.isfinite(gpu["energy_mj"]).sum() >= 2 else "power_w"
        read = gpu[np.isfinite(gpu[column])].sort_values("time")
        changed = read["time"][read[column].diff().fillna(0) != 0]
        if len(changed) >= 3:
            periods.append(float(changed.iloc[-1] - changed.iloc[0]) / (len(changed) - 1))
    return max(periods) if periods else math.nan


def energy_uncertainty_j(power_w_mean: float, windows: int, period_s: float) -> float:
    """How far an energy figure over `windows` windows may be off because the counter moves only
    every `period_s`: a reading is up to one period stale, so each window boundary can shift up
    to one period's energy in or out of the window. Bounded by one period of mean power at each
    boundary, two per window, summed over the windows (no cancelling assumed): 2 x windows x
    period x mean power. NaN where the period is not known."""
    return 2 * windows * period_s * power_w_mean


def energy_window_s(counter_period_s: float) -> float:
    """How long a variant's energy window must last for energy_resolved to hold:
    MIN_COUNTER_PERIODS counter periods, at most MAX_ENERGY_WINDOW_S; 0 (no window) where the
    period is not known."""
    if not (math.isfinite(counter_period_s) and counter_period_s > 0):
        return 0.0
    return min(MIN_COUNTER_PERIODS * counter_period_s, MAX_ENERGY_WINDOW_S)


def energy_resolved(joules: float, uncertainty_j: float) -> bool | float:
    """Whether an energy figure is resolved: uncertainty at most 2 / MIN_COUNTER_PERIODS of it, as
    from windows MIN_COUNTER_PERIODS counter periods long on average; NaN where either is unknown."""
    if not (math.isfinite(joules) and math.isfinite(uncertainty_j)) or joules <= 0:
        return math.nan
    return uncertainty_j <= joules * 2 / MIN_COUNTER_PERIODS


def phase_energies(timeline: pd.DataFrame, phases: dict[str, list[tuple[float, float]]], period_s: float) -> dict:
    """Each named phase's energy (window_energy over its windows) and, as `<name>_pm`, its
    uncertainty from the counter period (energy_uncertainty_j at the phase's mean power)."""
    columns = {}
    for name, windows in phases.items():
        joules = window_energy(timeline, windows)[0]
        duration = sum(t1 - t0 for t0, t1 in windows)
        power = joules / duration if duration > 0 else math.nan
        columns[name] = joules
        columns[f"{name}_pm"] = energy_uncertainty_j(power, len(windows), period_s)
    return columns


def summarize(
    timeline: pd.DataFrame, t0: float, t1: float, idle_power_w: float | None, samples_per_gpu: int,
    counter_period_s: float = math.nan,
) -> dict:
    """NVML metrics for the samples in [t0, t1] (perf_counter seconds) of a timeline with
    COLUMNS, as NvmlSampler.timeline() returns; `samples_per_gpu` is each GPU's work in the window."""
    return summarize_windows(timeline, [(t0, t1)], idle_power_w, samples_per_gpu, counter_period_s)


def summarize_windows(
    timeline: pd.DataFrame, windows: list[tuple[float, float]], idle_power_w: float | None, samples_per_gpu: int,
    counter_period_s: float = math.nan,
) -> dict:
    """NVML metrics over several windows taken together (the timed steps of each epoch, without
    the evaluations between them); `samples_per_gpu` is the work each sampled GPU did in all of
    them (under torchrun every rank trains an equal shard, so rank 0's count).

    energy_j_pm is energy_j's uncertainty from the counter period (energy_uncertainty_j), and
    energy_resolved says whether it is small enough to show the figure as fact (energy_resolved).

    energy_j covers each whole window: the energy measured between a window's first and last
    sample is scaled by its length over their span, so the part of the window before the first
    and after the last sample is not lost. Unmeasurable values are NaN, never 0.

    With several GPUs the figures are the node's (nvml_gpus says how many): energy and mean power
    are summed over GPUs, samples_per_j is the node's samples (samples_per_gpu x nvml_gpus) over
    the node's energy (power_w_max is the highest tick sum, idle_power_w should be the node's too), utilisation
    and SM clock are means over GPUs, temperature and nvml_mem_peak_mb the highest of any one
    GPU, nvml_samples the ticks, and throttled_share the share of ticks where any GPU throttled.
    One GPU gives its own figures.
    """
    times = timeline["time"]
    in_windows = np.zeros(len(timeline), dtype=bool)
    for t0, t1 in windows:
        in_windows |= ((times >= t0) & (times <= t1)).to_numpy()
    columns = COLUMNS + [GPU] if GPU in timeline else COLUMNS
    window = timeline.loc[in_windows, columns].astype(float)
    gpus = pd.DataFrame([_gpu_means(gpu) for gpu in per_gpu(window)])
    node_gpus = len(per_gpu(timeline))
    energy_j, source = window_energy(timeline, windows)
    duration = sum(t1 - t0 for t0, t1 in windows)
    above_idle = math.nan
    if idle_power_w is not None and math.isfinite(idle_power_w):
        above_idle = energy_j - idle_power_w * duration
    share = _throttled_share(window)
    uncertainty = energy_uncertainty_j(energy_j / duration if duration > 0 else math.nan, len(windows), counter_period_s)
    return {
        "nvml_gpus": node_gpus,
        "nvml_samples": int(gpus["nvml_samples"].max()),
        "gpu_util_mean": float(gpus["gpu_util_mean"].mean()),
        "gpu_util_max": float(window["gpu_util"].max()),
        "mem_util_mean": float(gpus["mem_util_mean"].mean()),
        "power_w_mean": float(gpus["power_w_mean"].sum(skipna=False)),
        "power_w_max": float(_tick_power(window).max()),
        "sm_clock_mhz_mean": float(gpus["sm_clock_mhz_mean"].mean()),
        "temp_c_max": float(window["temp_c"].max()),
        "nvml_mem_peak_mb": float(window["mem_used_mb"].max()),
        "energy_j": energy_j,
        "energy_j_pm": uncertainty,
        "energy_resolved": energy_resolved(energy_j, uncertainty),
        "energy_source": source,
        "energy_above_idle_j": above_idle,
        "samples_per_j": samples_per_gpu * node_gpus / energy_j if energy_j > 0 else math.nan,
        "throttled_share": share,
        "throttled": share > THROTTLED_SHARE_LIMIT if math.isfinite(share) else math.nan,
    }


def _gpu_means(window: pd.DataFrame) -> dict:
    """One GPU's sample count and mean readings in the windows, for summarize_windows to combine."""
    return {"nvml_samples": len(window), "gpu_util_mean": window["gpu_util"].mean(),
            "mem_util_mean": window["mem_util"].mean(), "power_w_mean": window["power_w"].mean(),
            "sm_clock_mhz_mean": window["sm_clock_mhz"].mean()}
