"""The measurement path on CPU: fp32, bf16 autocast, torch.compile, failures, resume and Ctrl-C."""

import math
import re

import pandas as pd
import pytest
import torch

from bench.parent import matrix as run_module
from bench.config import RunContext
from bench.parent.matrix import nvml_columns, run_matrix
from bench.worker.runner import measure
from bench.variants import CHANNELS, Variant
from conftest import host_peak_resets, tiny_config
from loaders.dataset import discover_ids
from loaders.split import make_split, stratified_subset
from reports.results import CURVE_COLUMNS, RESULT_COLUMNS


config = tiny_config


def test_fp32_row_has_every_measurement(tiny_data, split):
    result = measure(Variant("add", batch_size=8, loader="resident"), config(tiny_data, split, epochs=2))
    row = result.row
    assert set(row) <= set(RESULT_COLUMNS)
    assert row["status"] == "ok" and row["params"] == 7_074_334
    assert 0 <= row["accuracy"] <= 100 and row["val_loss"] > 0
    assert row["train_samples_per_s"] > 0 and row["step_ms_p50"] > 0 and row["infer_samples_per_s"] > 0
    assert 0 <= row["data_wait_share"] < 1
    # "_since_start" only where the kernel ignores the peak's reset (tests/test_known_answers.py)
    assert row["peak_mem_kind"] == "process_peak_rss" or (
        row["peak_mem_kind"] == "process_peak_rss_since_start" and not host_peak_resets())
    assert row["peak_mem_mb"] > 0
    assert row["flops_per_sample"] > 1e8
    assert row["mfu_per_gpu"] is None and "nvml_note" not in row  # NVML columns are the parent's, from the phases
    phases = result.phases
    assert phases.t_start <= phases.warmup_window[1] == phases.steady_windows[0][0] < phases.eval_windows[0][0]
    assert phases.steady_windows[-1][1] <= phases.eval_windows[-1][0] < phases.eval_windows[-1][1] <= phases.t_end
    assert [label.split(":")[-1] for _, label in phases.marks] == ["0", "inference", "reference", "idle"]
    assert "no CUDA" in nvml_columns(phases, config(tiny_data, split), RunContext())["nvml_note"]  # n/a with the reason
    assert row["samples_trained"] == 2 * 2 * 8
    assert row["optimizer"] == "adam-forloop" and row["reference_samples_per_s"] > 0
    assert row["harness_efficiency"] == pytest.approx(row["train_samples_per_s"] / row["reference_samples_per_s"])
    assert [c["epoch"] for c in result.curves] == [0, 1]
    assert set(result.curves[0]) == set(CURVE_COLUMNS)
    assert result.curves[1]["lr"] < result.curves[0]["lr"]  # cosine schedule over the epochs


def test_bf16_autocast_on_cpu(tiny_data, split):
    """bf16 matmuls are slow on most CPUs: two steps of 8 samples are enough to prove the path."""
    row = measure(Variant("mul", precision="bf16", batch_size=8, loader="resident"),
                  config(tiny_data, split, train_ids=stratified_subset(split["train"], 16), val_ids=split["val"][:8])).row
    assert row["status"] == "ok" and row["precision"] == "bf16" and math.isfinite(row["val_loss"])


def test_channels_last_and_torch_loader(tiny_data, split):
    row = measure(Variant("late", memory_format="channels_last", batch_size=8, loader="torch"),
                  config(tiny_data, split)).row
    assert row["status"] == "ok" and row["loader_form"] == "png"


@pytest.mark.slow
def test_compiled_variant_on_cpu(tiny_data, split):
    """One small compiled case (compiling a fusion net takes ~30 s on CPU)."""
    row = measure(Variant("add", compile_mode="default", batch_size=8, loader="resident"),
                  config(tiny_data, split, epochs=2, warmup_steps=2)).row
    assert row["status"] == "ok"
    assert row["compiled_graphs"] >= 1 and row["graph_breaks"] == 0
    assert row["recompiles_timed"] == 0 and row["suspect"] is False
    assert row["compile_s"] > 0  # the warm-up carried tracing and compilation (less with a warm Inductor cache)


def test_failure_is_recorded_and_the_run_goes_on(tiny_data, split, tmp_path, monkeypatch):
    real_measure = run_module.measure

    def flaky(variant, cfg, ctx=None):
        if variant.arch == "mul":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_measure(variant, cfg, ctx)

    monkeypatch.setattr(run_module, "measure", flaky)
    variants = [Variant("mul", batch_size=8, loader="resident"), Variant("add", batch_size=8, loader="resident")]
    failures = run_matrix(variants, config(tiny_data, split), tmp_path, {"hardware": "test"})
    assert failures == 1
    results = pd.read_csv(tmp_path / "results.csv")
    assert list(results["status"]) == ["failed", "ok"]
    assert "OutOfMemoryError: CUDA out of memory" in results.loc[0, "error"]
    assert list(results.columns) == RESULT_COLUMNS
    report = (tmp_path / "report.md").read_text()
    assert "## Failed variants" in report and "mul-maxpool" in report


def test_a_data_error_stops_the_run_at_the_first_variant(tiny_data, split, tmp_path, monkeypatch):
    """Broken data fails every variant alike: it is recorded once and the run stops, report written."""
    from loaders.dataset import DatasetError
    calls = []

    def broken(variant, cfg, ctx=None):
        calls.append(variant.name)
        raise DatasetError("cannot decode PNG cubes/rgb/0001.png")

    monkeypatch.setattr(run_module, "measure", broken)
    with pytest.raises(DatasetError, match="0001.png"):
        run_matrix([Variant("add"), Variant("mul")], config(tiny_data, split), tmp_path, {})
    assert calls == [Variant("add").name]
    assert list(pd.read_csv(tmp_path / "results.csv")["status"]) == ["failed"]
    assert "0001.png" in (tmp_path / "report.md").read_text()


def test_summary_line_says_na_for_a_run_too_short_to_time():
    row = {"variant": "add", "accuracy": 50.0, "val_loss": 0.7, "train_samples_per_s": math.nan, "sec_per_epoch": 1.0}
    line = run_module.summary_line(row, seed=43)
    assert "nan" not in line and "n/a" in line and "seed 43" in line


def test_resume_skips_finished_variants(tiny_data, split, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(run_module, "measure", lambda v, cfg, ctx=None: calls.append(v.name) or fake_result(v))
    first = [Variant("add", batch_size=8)]
    run_matrix(first, config(tiny_data, split), tmp_path, {})
    run_matrix(first + [Variant("mul", batch_size=8)], config(tiny_data, split), tmp_path, {}, resume=True)
    assert calls == [first[0].name, Variant("mul", batch_size=8).name]
    assert len(pd.read_csv(tmp_path / "results.csv")) == 2


def test_ctrl_c_leaves_a_valid_partial_report(tiny_data, split, tmp_path, monkeypatch):
    def interrupted(variant, cfg, ctx=None):
        if variant.arch == "mul":
            raise KeyboardInterrupt
        return fake_result(variant)

    monkeypatch.setattr(run_module, "measure", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_matrix([Variant("add"), Variant("mul"), Variant("late")], config(tiny_data, split), tmp_path, {})
    assert list(pd.read_csv(tmp_path / "results.csv")["arch"]) == ["add"]
    assert "add-maxpool" in (tmp_path / "report.md").read_text()


def fake_result(variant):
    from bench.worker.runner import VariantResult
    row = {**variant.settings(), "status": "ok", "error": "", "epochs": 1, "train_samples": 16, "val_samples": 16,
           "loader_form": "png", "params": 1, "val_loss": 0.5, "accuracy": 75.0, "sec_per_epoch": 1.0,
           "train_samples_per_s": 10.0, "target_acc": 99.0, "peak_mem_kind": "process_peak_rss", "peak_mem_mb": 1.0}
    return VariantResult(row, [], [])


def test_short_training_lowers_loss_and_beats_chance(tiny_data, split):
    """Learning is real: 74 steps of batch 16 lower the loss and beat chance on 400 held-out
    samples (65.8 % here). lr 3e-4 instead of the seed's 1e-4 and 600 training samples keep the
    run short on two CPU cores; the reference loop and inference timing are not under test.
    """
    from loaders.generate import generate_dataset
    root = generate_dataset(tiny_data.parent / "learn", per_class=500, seed=3, progress=False)
    learn_split = make_split(discover_ids(root), val_fraction=0.4, seed=0)
    cfg = config(root, learn_split, train_ids=learn_split["train"], val_ids=learn_split["val"], epochs=2, lr=3e-4,
                 infer_iters=0, reference_steps=0)
    result = measure(Variant("add", batch_size=16, loader="resident"), cfg)
    curves = result.curves
    assert len(learn_split["val"]) == 400 and curves[-1]["train_loss"] < curves[0]["train_loss"]
    assert result.row["accuracy"] > 60.0, curves  # chance is 50 %; 60 % on 400 samples is p < 1e-4


def test_report_shows_speed_up_over_the_seed_pipeline_and_energy_windows(tiny_data, split, tmp_path, monkeypatch):
    rates = {"torch": 2000.0, "resident": 9000.0}

    def faked(variant, cfg, ctx=None):
        result = fake_result(variant)
        result.row.update(train_samples_per_s=rates[variant.loader], harness_efficiency=0.9, energy_j=10.0,
                          samples_per_j=5.0, compile_energy_j=3.0, val_energy_j=1.0, phase_energy_j=15.0)
        return result

    monkeypatch.setattr(run_module, "measure", faked)
    variants = [Variant("add", loader="torch", epochs=3), Variant("add", precision="bf16", loader="resident")]
    run_matrix(variants, config(tiny_data, split), tmp_path, {})
    report = (tmp_path / "report.md").read_text()
    assert "## Speed-up over the seed's way of training" in report
    speed_up = [line for line in report.split("## Speed-up")[1].splitlines() if "resident-b32" in line][0]
    assert re.search(r"\| resident +\| +9,000 \| +4\.50? \|", speed_up), speed_up  # 9,000 / 2,000
    assert "harness efficiency" in report and re.search(r"\| +0\.90? \|", report)
    assert "cover the energy window" in report and "compile J" in report


def test_step_mode_falls_back_to_the_eager_step_on_cpu_and_says_so(tiny_data, split, monkeypatch):
    """--compile-mode step off CUDA: the same training as eager (capturable fused Adam, lr a
    tensor read back as a float for the curves), with the reason in the row. torch.compile is the
    identity here: the fallback is under test, not Inductor (test_compiled_variant_on_cpu)."""
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: model)
    cfg = config(tiny_data, split, epochs=2)
    with pytest.warns(RuntimeWarning, match="needs a CUDA device"):
        step = measure(Variant("add", compile_mode="step", batch_size=8, loader="resident"), cfg)
    eager = measure(Variant("add", batch_size=8, loader="resident"), cfg)
    assert step.row["status"] == "ok" and step.row["optimizer"] == "adam-fused-capturable"
    assert "--compile-mode step needs a CUDA device" in step.row["note"] and eager.row["note"] == ""
    lrs = [c["lr"] for c in step.curves]
    assert all(type(lr) is float for lr in lrs) and lrs == pytest.approx([c["lr"] for c in eager.curves], rel=1e-6)
    assert lrs[1] < lrs[0]  # the cosine schedule reaches the tensor lr
    losses = [[c[k] for c in r.curves] for r in (step, eager) for k in ("train_loss", "val_loss")]
    torch.testing.assert_close(losses[:2], losses[2:], rtol=1e-4, atol=1e-6)


class TinyPoolNet(torch.nn.Module):
    """One conv + ReLU + 2x2 max-pool per modality, summed, then a linear head: a pair for
    fuse_relu_maxpool, small enough for Triton's interpreter."""

    def __init__(self):
        super().__init__()
        self.rgb, self.lidar = (torch.nn.Sequential(torch.nn.Conv2d(4, 2, 3, stride=4, padding=1), torch.nn.ReLU(),
                                                    torch.nn.MaxPool2d(2)) for _ in range(2))
        self.head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2 * 8 * 8, 2))

    def forward(self, rgb, lidar):
        return self.head(self.rgb(rgb) + self.lidar(lidar))


def test_relu_maxpool_kernel_only_where_it_won_and_named_in_the_row(tiny_data, split, tmp_path, monkeypatch):
    """On a CPU use_kernel is False whatever the table says, and the torch path runs; where it
    says the kernel won (patched), the network pools with it (TRITON_INTERPRET=1 here)."""
    from bench.worker import trainer as trainer_module
    from kernels import relu_maxpool
    from kernels.select import COLUMNS
    monkeypatch.setattr(trainer_module, "build_model", lambda arch, downsample, channels: TinyPoolNet())
    calls = []
    real_forward = relu_maxpool.relu_maxpool_forward
    monkeypatch.setattr(relu_maxpool, "relu_maxpool_forward", lambda x: calls.append(x.shape) or real_forward(x))
    table = tmp_path / "kernels.csv"
    pd.DataFrame([{**dict.fromkeys(COLUMNS, 1.0), "kernel": "relu_maxpool", "device_name": "cpu", "wins": True}],
                 columns=COLUMNS).to_csv(table, index=False)
    cfg = config(tiny_data, split, reference_steps=0, kernels=str(table))
    variant = Variant("add", batch_size=8, loader="resident")
    assert measure(variant, cfg).row["kernels"] == "" and calls == []
    monkeypatch.setattr(trainer_module, "use_kernel", lambda kernel, device, results, **case: kernel == "relu_maxpool")
    row = measure(variant, cfg).row
    assert row["status"] == "ok" and row["kernels"] == "relu_maxpool" and math.isfinite(row["final_train_loss"])
    assert (8, 2, 16, 16) in calls  # the training batches pooled by the kernel


def test_aligned_channels_train_the_seed_function(tiny_data, split):
    """Same seed: the aligned network starts from the seed network's function and learns it, so
    the losses agree to float rounding (other conv widths pick other CPU algorithms); its logical
    parameter count is the seed's, the stored one holds the zero padding (50, 100 -> 56, 104).
    The flag's path to these variants: test_variants.py::test_step_compile_mode_and_channels_from_the_command_line."""
    cfg = config(tiny_data, split, infer_iters=0)
    seed, aligned = (measure(Variant("add", batch_size=8, loader="resident", channels=c), cfg).row for c in CHANNELS)
    assert (seed["channels"], aligned["channels"]) == ("seed", "aligned") and "-aligned-" in aligned["variant"]
    assert seed["params"] == aligned["params"] == seed["params_stored"] == 7_074_334
    assert aligned["params_stored"] == 7_074_334 + 2 * (222 + 7_420 + 7_200)  # two embedders' padding
    assert aligned["final_train_loss"] == pytest.approx(seed["final_train_loss"], rel=1e-4)
    assert aligned["val_loss"] == pytest.approx(seed["val_loss"], rel=1e-4)


def test_report_lists_kernels_and_notes(tiny_data, split, tmp_path, monkeypatch):
    extra = {"add": {"kernels": "relu_maxpool"}, "mul": {"note": "--compile-mode step needs a CUDA device"}, "late": {}}

    def faked(variant, cfg, ctx=None):
        result = fake_result(variant)
        result.row.update(extra[variant.arch])
        return result

    monkeypatch.setattr(run_module, "measure", faked)
    run_matrix([Variant(arch) for arch in extra], config(tiny_data, split), tmp_path, {})
    notes = (tmp_path / "report.md").read_text().split("## Kernels and notes")[1].split("##")[0]
    assert "relu_maxpool" in notes and "needs a CUDA device" in notes and "late-" not in notes
