"""NVML sampler: the window summary on hand-built timelines, and the real sampler on a GPU."""

import math
import time

import numpy as np
import pandas as pd
import pynvml
import pytest
import torch

from bench.instruments import nvml
from bench.instruments.nvml import COLUMNS, NvmlSampler, label_samples, nvml_unavailable_reason, summarize

NAN = math.nan


def make_timeline(n, **columns):
    """A timeline of n samples one second apart; unspecified columns hold 0 or NaN energy."""
    data = {name: [0.0] * n for name in COLUMNS}
    data["time"] = [float(i) for i in range(n)]
    data["energy_mj"] = [NAN] * n
    data.update(columns)
    return pd.DataFrame(data)


def test_counter_energy_is_last_minus_first_and_subtracts_idle():
    timeline = make_timeline(
        5,
        energy_mj=[1000.0, 2000.0, 3000.0, 4000.0, 5000.0],
        power_w=[100.0, 100.0, 300.0, 100.0, 100.0],  # ignored: the counter wins
    )
    result = summarize(timeline, 0.0, 4.0, idle_power_w=0.5, samples_per_gpu=8)
    assert result["energy_source"] == "counter"
    assert result["energy_j"] == pytest.approx(4.0)
    assert result["energy_above_idle_j"] == pytest.approx(4.0 - 0.5 * 4.0)
    assert result["samples_per_j"] == pytest.approx(2.0)
    assert result["power_w_mean"] == pytest.approx(140.0)
    assert result["power_w_max"] == 300.0
    assert result["nvml_samples"] == 5


def test_integrated_power_when_counter_is_missing():
    timeline = make_timeline(5, power_w=[100.0, 200.0, 200.0, 100.0, 100.0])
    result = summarize(timeline, 0.0, 4.0, idle_power_w=None, samples_per_gpu=600)
    assert result["energy_source"] == "integrated_power"
    assert result["energy_j"] == pytest.approx(150.0 + 200.0 + 150.0 + 100.0)
    assert math.isnan(result["energy_above_idle_j"])
    assert result["samples_per_j"] == pytest.approx(1.0)


def test_energy_is_scaled_to_the_whole_window():
    timeline = make_timeline(5, power_w=[100.0] * 5)
    result = summarize(timeline, -0.5, 4.5, idle_power_w=20.0, samples_per_gpu=1)
    assert result["energy_j"] == pytest.approx(500.0)  # 400 J over 4 s of samples, 5 s window
    assert result["energy_above_idle_j"] == pytest.approx(500.0 - 20.0 * 5.0)


def test_samples_outside_the_window_are_ignored():
    timeline = make_timeline(
        6, gpu_util=[0.0, 50.0, 70.0, 90.0, 0.0, 100.0], temp_c=[30.0, 40.0, 41.0, 42.0, 99.0, 99.0]
    )
    result = summarize(timeline, 1.0, 3.0, idle_power_w=None, samples_per_gpu=1)
    assert result["gpu_util_mean"] == pytest.approx(70.0)
    assert result["gpu_util_max"] == 90.0
    assert result["temp_c_max"] == 42.0
    assert result["nvml_samples"] == 3


def test_throttle_share_ignores_idle_and_clock_setting_bits():
    # 0 none, 0x1 idle, 0x2 app clocks, 0x3 both: not throttling.
    # 0x4 sw power cap, 0x40 hw thermal, 0x21 idle + sw thermal: throttling.
    reasons = [0.0, 1.0, 2.0, 3.0, 4.0, 64.0, 33.0, NAN]
    timeline = make_timeline(len(reasons), clock_event_reasons=reasons)
    result = summarize(timeline, 0.0, 7.0, idle_power_w=None, samples_per_gpu=1)
    assert result["throttled_share"] == pytest.approx(3 / 7)
    assert result["throttled"] is True


def test_not_throttled_when_only_idle_bits():
    timeline = make_timeline(4, clock_event_reasons=[1.0, 2.0, 0.0, 1.0])
    result = summarize(timeline, 0.0, 3.0, idle_power_w=None, samples_per_gpu=1)
    assert result["throttled_share"] == 0.0
    assert result["throttled"] is False


def test_empty_window_is_nan_not_zero():
    timeline = make_timeline(3, power_w=[100.0] * 3, energy_mj=[0.0, 1.0, 2.0])
    result = summarize(timeline, 10.0, 20.0, idle_power_w=50.0, samples_per_gpu=100)
    assert result["energy_source"] == ""
    assert result["nvml_samples"] == 0
    for key, value in result.items():
        if key not in ("energy_source", "nvml_samples", "nvml_gpus"):
            assert math.isnan(value), key


def test_summarize_accepts_an_empty_timeline():
    empty = pd.DataFrame(columns=COLUMNS)
    result = summarize(empty, 0.0, 1.0, idle_power_w=None, samples_per_gpu=1)
    assert math.isnan(result["energy_j"]) and result["energy_source"] == ""


def test_label_samples_carries_the_latest_mark():
    timeline = make_timeline(5)
    marks = pd.DataFrame({"time": [0.5, 2.0], "label": ["train", "eval"]})
    labelled = label_samples(timeline, marks)
    assert list(labelled["marker"]) == ["", "train", "eval", "eval", "eval"]


def test_failing_fields_read_as_nan(monkeypatch):
    """Without NVML every read raises; one working field still comes through."""
    monkeypatch.setattr(nvml.pynvml, "nvmlDeviceGetPowerUsage", lambda handle: 250_000)
    row = nvml._read_sample(handle=None)
    assert list(row) == COLUMNS
    assert row["power_w"] == 250.0
    assert all(math.isnan(row[name]) for name in COLUMNS if name not in ("time", "power_w"))


def test_sampler_thread_with_faked_nvml(monkeypatch, tmp_path):
    """Start/stop/restart, marks, idle power and nvml.csv, with NVML calls faked on a CPU."""
    monkeypatch.setattr(nvml, "nvml_unavailable_reason", lambda device: None)
    monkeypatch.setattr(nvml, "handle_for", lambda device: "handle")
    monkeypatch.setattr(nvml.pynvml, "nvmlInit", lambda: None)
    monkeypatch.setattr(nvml.pynvml, "nvmlShutdown", lambda: None)
    monkeypatch.setattr(nvml.pynvml, "nvmlDeviceGetPowerUsage", lambda handle: 80_000)
    sampler = NvmlSampler(torch.device("cuda"), period_s=0.01)
    assert sampler.measure_idle_power(0.1) == pytest.approx(80.0)
    with sampler:
        sampler.mark("train")
        time.sleep(0.1)
    first = len(sampler.timeline())
    with sampler:
        time.sleep(0.05)
    assert len(sampler.timeline()) > first > 5
    assert list(sampler.marks()["label"]) == ["idle", "train"]
    sampler.to_csv(tmp_path / "nvml.csv")
    written = pd.read_csv(tmp_path / "nvml.csv", keep_default_na=False)
    assert list(written.columns) == COLUMNS + ["marker"]
    assert written["marker"].iloc[-1] == "train"


def test_unavailable_reason_on_cpu():
    assert nvml_unavailable_reason(torch.device("cpu")) == "no CUDA device"


class FakeProps:
    pci_domain_id, pci_bus_id, pci_device_id = 0, 0x1B, 0


@pytest.mark.parametrize("init_error,handle_error,expected", [
    (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, None, "pynvml could not initialise: NVML Shared Library Not Found"),
    (None, pynvml.NVML_ERROR_NOT_FOUND, "no NVML device at PCI bus id 00000000:1b:00.0: Not Found"),
    (None, None, None),
])
def test_unavailable_reason_names_the_cause_on_cuda(monkeypatch, init_error, handle_error, expected):
    """NVML not loadable, or no NVML device at the CUDA device's bus id (looked up by bus id, not
    index), each named; None when the handle is found; NVML shut down after every lookup."""
    calls = []

    def fail_with(code, then=None):
        def call(*args):
            calls.append(args)
            if code is not None:
                raise pynvml.NVMLError(code)
            return then
        return call

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: FakeProps)
    monkeypatch.setattr(pynvml, "nvmlInit", fail_with(init_error))
    monkeypatch.setattr(pynvml, "nvmlDeviceGetHandleByPciBusId", fail_with(handle_error, then="handle"))
    monkeypatch.setattr(pynvml, "nvmlShutdown", lambda: calls.append("shutdown"))
    assert nvml_unavailable_reason(torch.device("cuda", 0)) == expected
    assert calls == ([()] if init_error else [(), ("00000000:1b:00.0",), "shutdown"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_real_sampler_records_rows(tmp_path):
    device = torch.device("cuda")
    assert nvml_unavailable_reason(device) is None
    sampler = NvmlSampler(device, period_s=0.02)
    with sampler:
        sampler.mark("work")
        time.sleep(0.3)
    timeline = sampler.timeline()
    assert len(timeline) >= 5
    assert (timeline["power_w"] > 0).all()
    with sampler:  # restartable
        time.sleep(0.1)
    assert len(sampler.timeline()) > len(timeline)
    sampler.to_csv(tmp_path / "nvml.csv")
    written = pd.read_csv(tmp_path / "nvml.csv")
    assert "work" in set(written["marker"].fillna(""))


def test_windows_sum_their_energy_and_leave_the_gaps_out():
    """Two timed-step windows with a validation burst between them: the burst's samples and
    energy are not charged to the steady steps."""
    power = [100.0, 100.0, 100.0, 400.0, 400.0, 100.0, 100.0, 100.0]
    timeline = make_timeline(8, power_w=power, gpu_util=[50.0, 50.0, 50.0, 99.0, 99.0, 50.0, 50.0, 50.0])
    result = nvml.summarize_windows(timeline, [(0.0, 2.0), (5.0, 7.0)], idle_power_w=10.0, samples_per_gpu=400)
    assert result["energy_j"] == pytest.approx(400.0)  # 2 s at 100 W, twice
    assert result["samples_per_j"] == pytest.approx(1.0)
    assert result["energy_above_idle_j"] == pytest.approx(400.0 - 10.0 * 4.0)
    assert result["gpu_util_mean"] == 50.0 and result["power_w_max"] == 100.0 and result["nvml_samples"] == 6


def test_a_window_shorter_than_the_sampling_period_is_interpolated():
    timeline = make_timeline(4, energy_mj=[0.0, 1000.0, 3000.0, 6000.0])  # 1, 2, 3 W in the three seconds
    joules, source = nvml.window_energy(timeline, [(1.25, 1.75)])
    assert joules == pytest.approx(1.0) and source == "counter"  # half a second at 2 W
    assert nvml.window_energy(timeline, [(0.5, 1.5), (2.0, 2.5)])[0] == pytest.approx(0.5 + 1.0 + 1.5)
    assert math.isnan(nvml.window_energy(timeline, [(2.5, 3.5)])[0])  # past the last sample: not measured
    assert math.isnan(nvml.window_energy(timeline, [])[0])


def test_whole_phase_compile_and_validation_windows_add_up():
    timeline = make_timeline(11, power_w=[100.0] * 11)
    phase = nvml.window_energy(timeline, [(0.0, 10.0)])[0]
    parts = nvml.window_energy(timeline, [(0.0, 2.0), (2.0, 6.0), (6.0, 10.0)])[0]
    assert phase == pytest.approx(1000.0) and parts == pytest.approx(phase)


def fake_nvml(monkeypatch, watts_by_handle):
    """NVML faked on a CPU: each device's handle names its CUDA index and reads its own power."""
    monkeypatch.setattr(nvml, "nvml_unavailable_reason", lambda device: None)
    monkeypatch.setattr(nvml, "handle_for", lambda device: f"gpu{device.index}")
    monkeypatch.setattr(nvml.pynvml, "nvmlInit", lambda: None)
    monkeypatch.setattr(nvml.pynvml, "nvmlShutdown", lambda: None)
    monkeypatch.setattr(nvml.pynvml, "nvmlDeviceGetPowerUsage", lambda handle: watts_by_handle[handle] * 1000)


def test_two_gpu_sampler_reads_both_gpus_every_tick(monkeypatch, tmp_path):
    fake_nvml(monkeypatch, {"gpu0": 80.0, "gpu1": 120.0})
    sampler = NvmlSampler([torch.device("cuda", 0), torch.device("cuda", 1)], period_s=0.01)
    assert sampler.measure_idle_power(0.1) == pytest.approx(200.0)  # the node's idle power
    with sampler:
        sampler.mark("train")
        time.sleep(0.1)
    timeline = sampler.timeline()
    assert list(timeline.columns) == COLUMNS + [nvml.GPU]
    ticks = timeline.groupby("time")[nvml.GPU].apply(sorted)
    assert len(ticks) > 5 and all(gpus == [0.0, 1.0] for gpus in ticks)
    assert timeline.groupby(nvml.GPU)["power_w"].unique().to_dict() == {0.0: [80.0], 1.0: [120.0]}
    sampler.to_csv(tmp_path / "nvml.csv")
    written = pd.read_csv(tmp_path / "nvml.csv", keep_default_na=False)
    assert list(written.columns) == COLUMNS + [nvml.GPU, "marker"]
    assert set(written.loc[written["marker"] == "train", nvml.GPU]) == {0, 1}


def two_gpu_timeline():
    """GPU 0 draws 100 W by its energy counter, GPU 1 has no counter and draws 300 W; GPU 1
    throttles at the third tick only."""
    gpu0 = make_timeline(5, energy_mj=[0.0, 100_000.0, 200_000.0, 300_000.0, 400_000.0], power_w=[100.0] * 5,
                         gpu_util=[40.0] * 5, mem_used_mb=[1000.0] * 5, clock_event_reasons=[0.0] * 5)
    gpu1 = make_timeline(5, power_w=[300.0] * 5, gpu_util=[80.0] * 5, mem_used_mb=[3000.0] * 5,
                         clock_event_reasons=[0.0, 0.0, 4.0, 0.0, 0.0])
    return gpu0, gpu1, pd.concat([gpu0.assign(gpu=0.0), gpu1.assign(gpu=1.0)], ignore_index=True)


def test_summaries_add_the_energy_and_power_of_every_gpu():
    gpu0, gpu1, both = two_gpu_timeline()
    one = [nvml.summarize_windows(gpu, [(0.0, 4.0)], idle_power_w=None, samples_per_gpu=1) for gpu in (gpu0, gpu1)]
    result = nvml.summarize_windows(both, [(0.0, 4.0)], idle_power_w=150.0, samples_per_gpu=800)
    assert result["energy_j"] == pytest.approx(one[0]["energy_j"] + one[1]["energy_j"]) == pytest.approx(1600.0)
    assert result["energy_source"] == "counter+integrated_power"
    assert result["energy_above_idle_j"] == pytest.approx(1600.0 - 150.0 * 4.0)
    assert result["samples_per_j"] == pytest.approx(1.0)
    assert result["power_w_mean"] == pytest.approx(400.0) and result["power_w_max"] == pytest.approx(400.0)
    assert result["gpu_util_mean"] == pytest.approx(60.0) and result["gpu_util_max"] == 80.0
    assert result["nvml_mem_peak_mb"] == 3000.0  # the fullest GPU, not the sum
    assert result["nvml_samples"] == 5 and result["throttled_share"] == pytest.approx(1 / 5)
    assert nvml.window_energy(both, [(0.0, 1.0), (2.0, 3.0)])[0] == pytest.approx(2 * (100.0 + 300.0))


def test_one_gpu_summary_is_the_same_with_or_without_a_gpu_column():
    gpu0, _, _ = two_gpu_timeline()
    without = nvml.summarize_windows(gpu0, [(0.5, 3.5)], idle_power_w=20.0, samples_per_gpu=10, counter_period_s=0.1)
    with_column = nvml.summarize_windows(gpu0.assign(gpu=3.0), [(0.5, 3.5)], idle_power_w=20.0, samples_per_gpu=10,
                                         counter_period_s=0.1)
    assert with_column == without
    assert nvml.window_energy(gpu0.assign(gpu=3.0), [(1.25, 1.75)]) == nvml.window_energy(gpu0, [(1.25, 1.75)])


def test_samples_per_j_under_ddp_is_the_nodes_samples_over_the_nodes_energy():
    """Two ranks, each training 800 samples in the window, on GPUs drawing 100 W and 300 W: the
    node did 1,600 samples for 1,600 J (rank 0's 800 over the node's energy would be half)."""
    _, _, both = two_gpu_timeline()
    result = nvml.summarize_windows(both, [(0.0, 4.0)], idle_power_w=None, samples_per_gpu=800, counter_period_s=0.1)
    assert result["nvml_gpus"] == 2 and result["energy_j"] == pytest.approx(1600.0)
    assert result["samples_per_j"] == pytest.approx(1.0)
    gpu0, _, _ = two_gpu_timeline()
    alone = nvml.summarize_windows(gpu0, [(0.0, 4.0)], idle_power_w=None, samples_per_gpu=800)
    assert alone["nvml_gpus"] == 1 and alone["samples_per_j"] == pytest.approx(800 / 400.0)


def lagging_counter(seconds=30.0, sample_s=0.02, counter_s=0.1, seed=0):
    """A GPU whose power jumps between 100 and 400 W at random times and whose energy counter
    moves every counter_s (a read returns the energy at its last update), sampled every sample_s;
    with the exact cumulative energy to compare with."""
    rng = np.random.default_rng(seed)
    fine = np.arange(0.0, seconds, 0.001)
    power = np.where(np.cumsum(rng.random(len(fine)) < 0.003) % 2 == 0, 100.0, 400.0)
    exact = np.concatenate([[0.0], np.cumsum(power[:-1] * 0.001)])
    t = np.arange(0.0, seconds, sample_s)
    updated = np.floor(t / counter_s + 1e-9) * counter_s
    timeline = make_timeline(len(t), time=list(t), power_w=list(np.interp(t, fine, power)),
                             energy_mj=list(np.interp(updated, fine, exact) * 1000))
    return timeline, lambda a, b: float(np.interp(b, fine, exact) - np.interp(a, fine, exact))


def test_stated_uncertainty_bounds_the_counters_error_on_random_windows():
    """energy_j_pm is a bound: over many random windows of 0.3-6 s (one or several) on a lagging
    counter under bursty power, the error never exceeds it, and it is not loose by orders."""
    timeline, exact = lagging_counter()
    rng = np.random.default_rng(1)
    ratios = []
    for _ in range(200):
        starts = np.sort(rng.uniform(1.0, 22.0, rng.integers(1, 4)))
        windows = [(a, a + rng.uniform(0.3, 2.0)) for a in starts]
        windows = [w for i, w in enumerate(windows) if i == 0 or w[0] > windows[i - 1][1]]
        result = nvml.summarize_windows(timeline, windows, None, samples_per_gpu=1, counter_period_s=0.1)
        ratios.append(abs(result["energy_j"] - sum(exact(a, b) for a, b in windows)) / result["energy_j_pm"])
    assert max(ratios) <= 1.0
    assert max(ratios) > 0.1


def test_a_figure_is_resolved_only_from_windows_of_50_counter_periods():
    timeline = make_timeline(21, power_w=[100.0] * 21)
    long = nvml.summarize_windows(timeline, [(0.0, 5.0)], None, samples_per_gpu=1, counter_period_s=0.1)
    assert long["energy_j_pm"] == pytest.approx(2 * 0.1 * 100.0) and long["energy_resolved"] is True
    short = nvml.summarize_windows(timeline, [(0.0, 4.9)], None, samples_per_gpu=1, counter_period_s=0.1)
    assert short["energy_resolved"] is False
    merged = nvml.summarize_windows(timeline, [(0.0, 2.5), (3.0, 5.5)], None, samples_per_gpu=1, counter_period_s=0.1)
    assert merged["energy_j_pm"] == pytest.approx(4 * 0.1 * 100.0) and merged["energy_resolved"] is False
    unknown = nvml.summarize_windows(timeline, [(0.0, 5.0)], None, samples_per_gpu=1)
    assert math.isnan(unknown["energy_j_pm"]) and math.isnan(unknown["energy_resolved"])


def test_phase_energies_state_each_uncertainty():
    timeline = make_timeline(11, power_w=[100.0] * 11)
    columns = nvml.phase_energies(timeline, {"phase_energy_j": [(0.0, 10.0)], "val_energy_j": [(1.0, 2.0), (5.0, 6.0)],
                                             "compile_energy_j": []}, period_s=0.1)
    assert columns["phase_energy_j"] == pytest.approx(1000.0) and columns["phase_energy_j_pm"] == pytest.approx(20.0)
    assert columns["val_energy_j"] == pytest.approx(200.0) and columns["val_energy_j_pm"] == pytest.approx(40.0)
    assert math.isnan(columns["compile_energy_j"]) and math.isnan(columns["compile_energy_j_pm"])


def test_report_gives_each_energy_figure_its_uncertainty_and_flags_short_windows():
    from reports.markdown import energy_table
    ok = pd.DataFrame([
        {"variant": "long", "batch_size": 32, "nvml_gpus": 2, "energy_j": 1000.0, "energy_j_pm": 20.0,
         "energy_resolved": True, "samples_per_j": 64.0, "phase_energy_j": 3000.0, "phase_energy_j_pm": 10.0},
        {"variant": "short", "batch_size": 32, "nvml_gpus": 2, "energy_j": 100.0, "energy_j_pm": 20.0,
         "energy_resolved": False, "samples_per_j": 64.0, "phase_energy_j": 300.0, "phase_energy_j_pm": 10.0},
    ])
    text = energy_table(ok, {"nvml_counter_period_s": 0.1})
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in text.splitlines() if line.startswith("| long") or line.startswith("| short")}
    header = [c.strip() for c in next(l for l in text.splitlines() if l.startswith("| variant")).split("|")[2:-1]]
    long, short = (dict(zip(header, rows[name])) for name in ("long", "short"))
    assert long["GPUs"] == "2" and long["energy J"] == "1,000 ± 20" and long["phase J"] == "3,000 ± 10"
    assert long["samples/J"] == "64.0 ± 1.3" and long["J/step"] == "1.000 ± 0.020"  # 2 GPUs x 32 samples per step
    assert short["samples/J"] == "(64.0 ± 12.8)" and short["energy J"] == "(100 ± 20)"
    assert "(100 ms, measured before the run)" in text and "not resolved" in text and ": short." in text
