"""Each Triton kernel against its torch reference. Without a GPU they run through Triton's
interpreter (conftest.py sets TRITON_INTERPRET=1 before any test module imports kernels/). Sizes
stay tiny because the interpreter is slow.

bf16 tolerance: the interpreter casts fp32 -> bf16 by truncation (triton 3.8's cast_impl passes no
rounding mode) where a GPU rounds to nearest even, so bf16 outputs of arithmetic may differ by one
bf16 ulp: torch.testing's bf16 defaults (rtol 1.6e-2) cover that. fp32: rtol 1.3e-6 / atol 1e-5
(Triton's and torch's sin/cos differ in the last bit). Max-pooling only selects values, so its
outputs and gradients must be equal bit for bit in both dtypes.
"""

import numpy as np
import pandas as pd
import pytest
import torch

from bench.cli import main
from bench.config import RunConfig
from bench.variants import Variant
from bench.worker import reference_loop, trainer
from bench.commands import kernels as kernels_command
from conftest import requires_cuda
from kernels.input_prep import prepare_inputs, prepare_inputs_reference
from kernels.relu_maxpool import NO_GRADIENT, ReLUMaxPool, relu_maxpool_forward, relu_maxpool_reference
from kernels.select import COLUMNS, use_kernel, winners
from loaders.dataset import depth_to_xyza, prepare_batch, rgba_to_float
from models import build_model, fuse_relu_maxpool

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
H200 = "NVIDIA H200"
SEED_WIDTHS, ALIGNED_WIDTHS = (50, 100, 200), (56, 104, 200)

DTYPES = [torch.float32, torch.bfloat16]


def _raw_batch(batch=3, height=5, width=7, strided=False):
    """uint8 RGBA, depth (some beyond 50 m: no return) and per-sample angle tables; strided=True
    gives views with gaps and a broadcast table, as slices of bigger buffers would."""
    g = torch.Generator().manual_seed(0)
    if strided:
        rgba = torch.randint(0, 256, (batch, height, 2 * width, 4), dtype=torch.uint8, generator=g)[:, :, ::2]
        depth = (torch.rand(batch, width, height, generator=g) * 60).transpose(1, 2)
        zenith = torch.randn(width, generator=g).expand(batch, width)
    else:
        rgba = torch.randint(0, 256, (batch, height, width, 4), dtype=torch.uint8, generator=g)
        depth = torch.rand(batch, height, width, generator=g) * 60
        zenith = torch.randn(batch, width, generator=g)
    azimuth = torch.randn(batch, height, generator=g)
    return [t.to(DEVICE) for t in (rgba, depth, azimuth, zenith)]


def test_input_prep_reference_is_the_loaders_mathematics():
    rgba, depth, azimuth, zenith = _raw_batch()
    rgb, xyza = prepare_inputs_reference(rgba, depth, azimuth, zenith)
    assert torch.equal(rgb, rgba_to_float(rgba)) and torch.equal(xyza, depth_to_xyza(depth, azimuth, zenith))


@pytest.mark.parametrize("strided", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_input_prep_kernel_matches_reference(dtype, channels_last, strided):
    inputs = _raw_batch(strided=strided)
    assert strided != inputs[0].is_contiguous()
    got = prepare_inputs(*inputs, dtype=dtype, channels_last=channels_last)
    want = prepare_inputs_reference(*inputs, dtype=dtype, channels_last=channels_last)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    for g, w in zip(got, want):
        assert g.dtype == dtype and g.shape == (3, 4, 5, 7) and g.is_contiguous(memory_format=layout)
        torch.testing.assert_close(g, w, **({"rtol": 1.3e-6, "atol": 1e-5} if dtype == torch.float32 else {}))
    assert torch.equal(got[1][:, 3], want[1][:, 3])  # the return mask is exact


@pytest.mark.parametrize("strided", [False, True])
def test_loaders_take_the_input_prep_kernel_only_when_chosen(strided, monkeypatch):
    """loaders.dataset.prepare_batch (the DALI loader's batch()): the torch functions by default,
    the kernel when kernels.select chose it, with the same tensors (fp32 tolerances above)."""
    from kernels import input_prep
    calls = []
    monkeypatch.setattr(input_prep, "prepare_inputs", lambda *a, **k: calls.append(1) or prepare_inputs(*a, **k))
    inputs = _raw_batch(strided=strided)
    torch_path = prepare_batch(*inputs)
    assert calls == []
    kernel_path = prepare_batch(*inputs, kernel=True)
    assert calls == [1] and [t.dtype for t in kernel_path] == [torch.float32] * 2
    torch.testing.assert_close(kernel_path, torch_path, rtol=1.3e-6, atol=1e-5)


def test_input_prep_rejects_mismatched_shapes():
    rgba, depth, azimuth, zenith = _raw_batch()
    with pytest.raises(ValueError, match="zenith"):
        prepare_inputs(rgba, depth, azimuth, zenith[:, :-1])


def _pool_input(dtype, layout, batch=3, channels=5, height=7, width=9):
    """Odd batch, odd height and width (floor pooling drops a row and a column), a window of ties
    and windows with no positive value (ReLU passes no gradient there)."""
    x = torch.randn(batch, channels, height, width, generator=torch.Generator().manual_seed(1)).to(dtype)
    x[0, 0, :2, :2] = -1.0
    x[0, 1, :2, :2] = 0.5
    x[1, 2, 2:4, 2:4] = 0.0
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        x = torch.cat([x, x], dim=1)[:, ::2]  # a view with a channel stride of 2 planes
    return x.to(DEVICE)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_maxpool_values_and_gradients_equal_reference(dtype, layout):
    mine, theirs = _pool_input(dtype, layout).requires_grad_(), _pool_input(dtype, layout).requires_grad_()
    assert mine.is_contiguous() == (layout == "contiguous")
    y = ReLUMaxPool.apply(mine)
    want = relu_maxpool_reference(theirs)
    grad = torch.randn(want.shape, generator=torch.Generator().manual_seed(2)).to(dtype).to(DEVICE)
    y.backward(grad)
    want.backward(grad)
    assert torch.equal(y, want) and torch.equal(mine.grad, theirs.grad)
    assert y.dtype == dtype and mine.grad.dtype == dtype


def test_relu_maxpool_codes_mark_windows_without_gradient():
    y, code = relu_maxpool_forward(_pool_input(torch.float32, "contiguous"))
    assert code[0, 0, 0, 0] == NO_GRADIENT and code[0, 1, 0, 0] == 0  # all negative; tie goes to the first
    assert ((code == NO_GRADIENT) == (y == 0)).all()


def test_fused_pooling_keeps_the_network_function_and_state_dict():
    torch.manual_seed(0)
    model = build_model("add", "maxpool", channels="aligned").to(DEVICE)
    keys = list(model.state_dict())
    rgb, lidar = torch.rand(1, 4, 64, 64, device=DEVICE), torch.rand(1, 4, 64, 64, device=DEVICE)
    want = model(rgb, lidar)
    want.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    fused = fuse_relu_maxpool(model)
    got = fused(rgb, lidar)
    got.sum().backward()
    assert list(fused.state_dict()) == keys and sum(type(m).__name__ == "ReLUMaxPool2d" for m in fused.modules()) == 6
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    for p, g in zip(fused.parameters(), grads):
        torch.testing.assert_close(p.grad, g, rtol=0, atol=0)


def test_measure_and_tables_on_tiny_cases(tmp_path):
    """The command's bookkeeping, each kernel checked against eager on tiny cases, with a timer of
    known answers instead of do_bench (ms in the order measure times them: kernel, eager,
    compiled; nothing runs, nothing compiles): a kernel wins only when faster than both eager and
    compiled, never without a compiled time, and the tables name a kernel as used only where it
    won every case."""
    cases = [*kernels_command.input_prep_cases([1], DEVICE, size=4), *kernels_command.relu_maxpool_cases([1], DEVICE, size=8)]
    assert len(cases) == 4 + 2 * 2 * 5  # input_prep: 2 dtypes x 2 layouts; relu_maxpool: also 5 widths
    times = iter([1.0, 2.0, 3.0,  # input_prep: faster than both
                  1.0, 2.0, 3.0,
                  1.0, 2.0, 0.5,  # relu_maxpool: slower than compiled
                  1.0, 2.0])  # relu_maxpool, no compiled time: faster than eager, yet no win
    picked = [cases[0], cases[3], cases[4], cases[7]]  # two of each kernel
    rows = [kernels_command.measure(case, lambda fn: next(times), "test device", compile=i < 3) for i, case in enumerate(picked)]
    assert next(times, None) is None  # three timings per compiled case, two without
    text = kernels_command.write_tables(rows, tmp_path, "Kernels on test device", "note")
    table = __import__("pandas").read_csv(tmp_path / "kernels.csv")
    assert table["kernel"].tolist() == [c.kernel for c in picked] == ["input_prep"] * 2 + ["relu_maxpool"] * 2
    assert table["wins"].tolist() == [True, True, False, False]
    assert table["speedup_vs_eager"].tolist() == [2.0] * 4 and table["speedup_vs_compiled"].tolist()[:3] == [3.0, 3.0, 0.5]
    assert table["compiled_ms"].isna().tolist() == [False, False, False, True]
    assert "Used on this GPU (the kernel wins every case): input_prep." in text


def test_a_kernel_is_used_only_where_it_won_every_case_on_this_gpu(tmp_path, monkeypatch):
    rows = [("input_prep", "H200", True), ("input_prep", "H200", True), ("relu_maxpool", "H200", True),
            ("relu_maxpool", "H200", False), ("relu_maxpool", "H100", True)]
    table = __import__("pandas").DataFrame(
        [{"kernel": k, "device_name": d, "wins": w, "case": "", "dtype": "bf16", "layout": "cl", "channels": "", "batch_size": 32,
          "kernel_ms": 1, "eager_ms": 1, "compiled_ms": 1, "speedup_vs_eager": 1, "speedup_vs_compiled": 1}
         for k, d, w in rows])
    assert winners(table, "H200") == {"input_prep"} and winners(table, "H100") == {"relu_maxpool"}
    table.to_csv(tmp_path / "kernels.csv", index=False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "H200")
    assert use_kernel("input_prep", torch.device("cuda", 0), tmp_path)
    assert not use_kernel("relu_maxpool", torch.device("cuda", 0), tmp_path / "kernels.csv")
    assert not use_kernel("input_prep", torch.device("cpu"), tmp_path) and not use_kernel("input_prep", torch.device("cuda", 0), None)
    with pytest.raises(ValueError, match="not found"):
        use_kernel("input_prep", torch.device("cuda", 0), tmp_path / "missing.csv")


def _kernels_csv(path, won: dict) -> str:
    """A kernels.csv of relu_maxpool on an H200: `won` maps (dtype, layout, channels) to wins, at
    batch sizes 32 and 512."""
    rows = [{"kernel": "relu_maxpool", "case": f"{c}x fwd+bwd", "dtype": dtype, "layout": layout, "channels": c,
             "batch_size": batch, "device_name": H200, "kernel_ms": 1.0, "eager_ms": 2.0, "compiled_ms": 2.0,
             "speedup_vs_eager": 2.0, "speedup_vs_compiled": 2.0, "wins": wins}
            for (dtype, layout, c), wins in won.items() for batch in (32, 512)]
    pd.DataFrame(rows, columns=COLUMNS).to_csv(path, index=False)
    return str(path)


@pytest.fixture
def on_h200(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: H200)
    return torch.device("cuda", 0)


def test_a_kernel_is_used_only_for_the_precision_layout_and_widths_it_won(tmp_path, on_h200):
    """bench kernels measured relu_maxpool winning in bf16 channels_last at the aligned widths,
    losing at the seed widths, and never timed fp16."""
    won = {("bf16", "channels_last", c): True for c in ALIGNED_WIDTHS}
    won |= {("bf16", "channels_last", 50): False, ("bf16", "channels_last", 100): True}
    won |= {("fp32", "channels_last", c): True for c in (56, 104)}  # 200 not timed in fp32
    csv = _kernels_csv(tmp_path / "kernels.csv", won)

    def used(**settings):
        variant = Variant("add", **{"precision": "bf16", "memory_format": "channels_last", "channels": "aligned", **settings})
        return trainer.fuse_kernels(build_model("add", channels=variant.channels), variant, on_h200, csv)

    assert used() == ["relu_maxpool"]
    assert used(channels="seed") == []  # lost at width 50
    assert used(precision="fp32") == []  # width 200 never timed in fp32
    assert used(precision="fp16") == [] and used(memory_format="contiguous") == []  # never timed
    assert used(downsample="strided") == []  # no max-pool to fuse
    assert not use_kernel("relu_maxpool", on_h200, csv, dtype="bf16", layout="channels_last", channels=SEED_WIDTHS)


def test_fused_kernels_replace_every_pooling_layer(tmp_path, on_h200):
    csv = _kernels_csv(tmp_path / "kernels.csv", {("fp32", "contiguous", c): True for c in SEED_WIDTHS})
    model = build_model("late")
    assert trainer.fuse_kernels(model, Variant("late"), on_h200, csv) == ["relu_maxpool"]
    assert sum(type(m).__name__ == "ReLUMaxPool2d" for m in model.modules()) == 6


def test_kernels_command_times_the_cases_variants_use():
    """fp32 and bf16, both memory formats, at the seed and the aligned widths of every pooling layer."""
    from bench.commands.kernels import relu_maxpool_cases
    cases = list(relu_maxpool_cases([2], torch.device("cpu"), size=8))
    timed = {(c.dtype, c.layout, c.channels) for c in cases}
    for dtype in ("fp32", "bf16"):
        for layout in ("contiguous", "channels_last"):
            assert {(dtype, layout, c) for c in SEED_WIDTHS + ALIGNED_WIDTHS} <= timed
    assert len(cases) == len(timed) == 2 * 2 * 5


def test_the_reference_loop_builds_its_network_with_the_rows_kernels(monkeypatch):
    """The plain loop fuses what the Trainer fuses: else a winning kernel shows as harness
    efficiency above 1. No step runs (the fused Triton op would go through the interpreter)."""
    monkeypatch.setattr(trainer, "use_kernel", lambda kernel, device, results, **case: results == "won.csv")
    built, real = [], reference_loop.build_model
    monkeypatch.setattr(reference_loop, "build_model", lambda *a, **k: built.append(real(*a, **k)) or built[-1])
    monkeypatch.setattr(reference_loop, "time_calls", lambda step, steps, device, warmup=0: np.ones(steps))
    variant, cpu = Variant("add", batch_size=2), torch.device("cpu")
    reference_loop.reference_samples_per_s(variant, cpu, steps=1, warmup=0, kernels="won.csv")
    reference_loop.reference_samples_per_s(variant, cpu, steps=1, warmup=0, kernels=None)
    fused = [sum(type(m).__name__ == "ReLUMaxPool2d" for m in model.modules()) for model in built]
    cfg = RunConfig(data_root="", train_ids=[], val_ids=[], device=cpu, epochs=1, kernels="won.csv")
    assert fused == [6, 0] and trainer.Trainer(variant, cfg).kernels == ["relu_maxpool"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path of the command")
def test_kernels_command_skips_on_cpu(tmp_path, capsys):
    assert main(["kernels", "--device", "cpu", "--out", str(tmp_path)]) == 0
    assert "SKIP: no CUDA device" in capsys.readouterr().out
    assert "interpreter" in (tmp_path / "kernels.md").read_text()
    assert (tmp_path / "kernels.csv").read_text().startswith("kernel,case,dtype")


@requires_cuda
@pytest.mark.gpu
def test_kernels_command_times_every_case_on_a_gpu(tmp_path):
    assert main(["kernels", "--batch-size", "2", "--out", str(tmp_path)]) == 0
    table = __import__("pandas").read_csv(tmp_path / "kernels.csv")
    assert len(table) == 4 + 20 and (table[["kernel_ms", "eager_ms", "compiled_ms"]] > 0).all().all()
