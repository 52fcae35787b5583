"""NVML sampler: the window summary on hand-built timelines, and the real sampler on a GPU."""

import math
import time

import pandas as pd
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
    result = summarize(timeline, 0.0, 4.0, idle_power_w=0.5, samples=8)
    assert result["energy_source"] == "counter"
    assert result["energy_j"] == pytest.approx(4.0)
    assert result["energy_above_idle_j"] == pytest.approx(4.0 - 0.5 * 4.0)
    assert result["samples_per_j"] == pytest.approx(2.0)
    assert result["power_w_mean"] == pytest.approx(140.0)
    assert result["power_w_max"] == 300.0
    assert result["nvml_samples"] == 5


def test_integrated_power_when_counter_is_missing():
    timeline = make_timeline(5, power_w=[100.0, 200.0, 200.0, 100.0, 100.0])
    result = summarize(timeline, 0.0, 4.0, idle_power_w=None, samples=600)
    assert result["energy_source"] == "integrated_power"
    assert result["energy_j"] == pytest.approx(150.0 + 200.0 + 150.0 + 100.0)
    assert math.isnan(result["energy_above_idle_j"])
    assert result["samples_per_j"] == pytest.approx(1.0)


def test_energy_is_scaled_to_the_whole_window():
    timeline = make_timeline(5, power_w=[100.0] * 5)
    result = summarize(timeline, -0.5, 4.5, idle_power_w=20.0, samples=1)
    assert result["energy_j"] == pytest.approx(500.0)  # 400 J over 4 s of samples, 5 s window
    assert result["energy_above_idle_j"] == pytest.approx(500.0 - 20.0 * 5.0)


def test_samples_outside_the_window_are_ignored():
    timeline = make_timeline(
        6, gpu_util=[0.0, 50.0, 70.0, 90.0, 0.0, 100.0], temp_c=[30.0, 40.0, 41.0, 42.0, 99.0, 99.0]
    )
    result = summarize(timeline, 1.0, 3.0, idle_power_w=None, samples=1)
    assert result["gpu_util_mean"] == pytest.approx(70.0)
    assert result["gpu_util_max"] == 90.0
    assert result["temp_c_max"] == 42.0
    assert result["nvml_samples"] == 3


def test_throttle_share_ignores_idle_and_clock_setting_bits():
    # 0 none, 0x1 idle, 0x2 app clocks, 0x3 both: not throttling.
    # 0x4 sw power cap, 0x40 hw thermal, 0x21 idle + sw thermal: throttling.
    reasons = [0.0, 1.0, 2.0, 3.0, 4.0, 64.0, 33.0, NAN]
    timeline = make_timeline(len(reasons), clock_event_reasons=reasons)
    result = summarize(timeline, 0.0, 7.0, idle_power_w=None, samples=1)
    assert result["throttled_share"] == pytest.approx(3 / 7)
    assert result["throttled"] is True


def test_not_throttled_when_only_idle_bits():
    timeline = make_timeline(4, clock_event_reasons=[1.0, 2.0, 0.0, 1.0])
    result = summarize(timeline, 0.0, 3.0, idle_power_w=None, samples=1)
    assert result["throttled_share"] == 0.0
    assert result["throttled"] is False


def test_empty_window_is_nan_not_zero():
    timeline = make_timeline(3, power_w=[100.0] * 3, energy_mj=[0.0, 1.0, 2.0])
    result = summarize(timeline, 10.0, 20.0, idle_power_w=50.0, samples=100)
    assert result["energy_source"] == ""
    assert result["nvml_samples"] == 0
    for key, value in result.items():
        if key not in ("energy_source", "nvml_samples"):
            assert math.isnan(value), key


def test_summarize_accepts_an_empty_timeline():
    empty = pd.DataFrame(columns=COLUMNS)
    result = summarize(empty, 0.0, 1.0, idle_power_w=None, samples=1)
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
    reason = nvml_unavailable_reason(torch.device("cpu"))
    assert isinstance(reason, str) and reason


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
    result = nvml.summarize_windows(timeline, [(0.0, 2.0), (5.0, 7.0)], idle_power_w=10.0, samples=400)
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
