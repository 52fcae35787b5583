import pytest

from bench.cli import main
from bench.variants import Variant, build_matrix, filter_variants


def test_names_are_stable_and_readable():
    v = Variant("add", "maxpool", "bf16", "default", "channels_last", 32, "resident")
    assert v.name == "add-maxpool-bf16-compile_default-cl-resident-b32"
    assert Variant("late").name == "late-maxpool-fp32-eager-contig-torch-b32"
    assert v.settings()["variant"] == v.name and v.settings()["compile_mode"] == "default"


def test_amp_and_compile_give_four_variants_per_architecture():
    matrix = build_matrix(["late", "add"], precisions=["fp32", "bf16"], compile_modes=["none", "default"])
    assert len(matrix) == 8
    add = [v.name for v in matrix if v.arch == "add"]
    assert add == ["add-maxpool-fp32-eager-contig-torch-b32", "add-maxpool-bf16-eager-contig-torch-b32",
                   "add-maxpool-fp32-compile_default-contig-torch-b32", "add-maxpool-bf16-compile_default-contig-torch-b32"]
    assert len({v.name for v in build_matrix(["add"], batch_sizes=[32, 512], loaders=["torch", "resident"])}) == 4


def test_filter_by_glob_or_substring():
    matrix = build_matrix(["late", "add"], precisions=["fp32", "bf16"])
    assert [v.name for v in filter_variants(matrix, ["add*bf16*"])] == ["add-maxpool-bf16-eager-contig-torch-b32"]
    assert len(filter_variants(matrix, ["bf16"])) == 2
    assert filter_variants(matrix, None) == matrix


@pytest.mark.parametrize("field,value", [("channels", "wide"), ("precision", "fp8"), ("compile_mode", "fast"), ("memory_format", "nhwc")])
def test_bad_settings_are_rejected(field, value):
    with pytest.raises(ValueError, match=field):
        Variant("add", **{field: value})


def test_list_command_prints_the_matrix(capsys):
    assert main(["list", "--amp", "--compile", "--arch", "add,mul", "--loader", "resident", "--batch-size", "32"]) == 0
    names = capsys.readouterr().out.split()
    assert len(names) == 8 and "mul-maxpool-bf16-compile_default-contig-resident-b32" in names


def test_list_rejects_unknown_architecture(capsys):
    with pytest.raises(SystemExit):
        main(["list", "--arch", "resnet"])
    assert "resnet not one of late, concat, add, mul" in capsys.readouterr().err


def test_variant_filter_matching_nothing_is_an_error(capsys):
    assert main(["list", "--variants", "nothing-like-this"]) == 2
    assert "matches none" in capsys.readouterr().err


def test_aligned_channels_are_named_only_when_set():
    assert Variant("add", "maxpool", "bf16", channels="aligned").name == "add-maxpool-aligned-bf16-eager-contig-torch-b32"
    assert "seed" not in Variant("add").name and Variant("add").channels == "seed"
    matrix = build_matrix(["add"], channels=["seed", "aligned"])
    assert [v.name for v in matrix] == ["add-maxpool-fp32-eager-contig-torch-b32", "add-maxpool-aligned-fp32-eager-contig-torch-b32"]
    assert matrix[1].settings()["channels"] == "aligned"
    assert filter_variants(matrix, ["aligned"]) == [matrix[1]]


def test_compiled_property_and_probe_epochs_in_the_name():
    assert Variant("add", compile_mode="reduce-overhead").compiled and not Variant("add").compiled
    probe = Variant("add", loader="torch", epochs=3)
    assert probe.name == "add-maxpool-fp32-eager-contig-torch-b32-e3"
    assert "epochs" not in probe.settings()  # the row's epochs column is the run's, filled by the runner
    with pytest.raises(ValueError, match="epochs"):
        Variant("add", epochs=0)


@pytest.mark.parametrize("dali", [False, True])
def test_default_gpu_matrix_feeds_amp_and_compile_from_the_resident_loader(monkeypatch, capsys, dali):
    """`bench list --amp --compile` on a CUDA machine (patched): the seed's job at batch 32 on the
    resident loader, each network led by its seed pipeline probe and, with DALI, followed by a DALI-fed row."""
    import bench.options
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr(bench.options, "dali_available", lambda: dali)
    assert main(["list", "--amp", "--compile", "--arch", "add,mul"]) == 0
    names = capsys.readouterr().out.split()
    add = [n for n in names if n.startswith("add-")]
    assert add[0] == "add-maxpool-fp32-eager-contig-torch-b32-e3"  # the seed's pipeline: DataLoader, fp32, eager
    assert add[1:5] == ["add-maxpool-fp32-eager-contig-resident-b32", "add-maxpool-bf16-eager-contig-resident-b32",
                        "add-maxpool-fp32-compile_default-contig-resident-b32",
                        "add-maxpool-bf16-compile_default-contig-resident-b32"]
    dali_rows = ["add-maxpool-bf16-compile_default-contig-dali-b32-e3"]  # the most optimised setting
    assert add[5:] == (dali_rows if dali else [])
    assert len(names) == 2 * len(add)


def test_an_explicit_loader_or_profile_turns_the_pipeline_rows_off(monkeypatch, capsys):
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    main(["list", "--arch", "add", "--loader", "resident"])
    main(["list", "--arch", "add", "--profile", "seed"])
    assert capsys.readouterr().out.split() == ["add-maxpool-fp32-eager-contig-resident-b32",
                                               "add-maxpool-fp32-eager-contig-torch-b32"]


def test_step_compile_mode_and_channels_from_the_command_line(capsys):
    assert main(["list", "--compile", "--compile-mode", "step", "--channels", "seed,aligned", "--arch", "add",
                 "--loader", "resident", "--batch-size", "32"]) == 0
    assert capsys.readouterr().out.split() == [
        "add-maxpool-fp32-eager-contig-resident-b32", "add-maxpool-fp32-compile_step-contig-resident-b32",
        "add-maxpool-aligned-fp32-eager-contig-resident-b32",
        "add-maxpool-aligned-fp32-compile_step-contig-resident-b32"]
    with pytest.raises(SystemExit):
        main(["list", "--channels", "wide"])
    assert "wide not one of seed, aligned" in capsys.readouterr().err


def test_compile_mode_takes_a_comma_list(capsys):
    """Like every matrix flag: each mode named becomes a variant beside eager; --compile alone is
    mode default; an unknown mode is refused with the allowed ones (and a mode without --compile,
    tests/test_faults.py)."""
    flags = ["list", "--arch", "add", "--loader", "resident", "--batch-size", "32"]
    assert main([*flags, "--compile", "--compile-mode", "reduce-overhead,step"]) == 0
    assert capsys.readouterr().out.split() == ["add-maxpool-fp32-eager-contig-resident-b32",
                                               "add-maxpool-fp32-compile_reduce-overhead-contig-resident-b32",
                                               "add-maxpool-fp32-compile_step-contig-resident-b32"]
    assert main([*flags, "--compile"]) == 0
    assert capsys.readouterr().out.split() == ["add-maxpool-fp32-eager-contig-resident-b32",
                                               "add-maxpool-fp32-compile_default-contig-resident-b32"]
    with pytest.raises(SystemExit):
        main([*flags, "--compile", "--compile-mode", "default,fast"])
    assert "fast not one of default, reduce-overhead, max-autotune, step" in capsys.readouterr().err


def test_step_capture_refuses_fp16(capsys):
    """A captured step cannot run GradScaler (its inf check waits for the host): a one-line error."""
    with pytest.raises(ValueError, match="--compile-mode step cannot train --amp-dtype fp16"):
        Variant("add", precision="fp16", compile_mode="step")
    assert main(["list", "--amp", "--amp-dtype", "fp16", "--compile", "--compile-mode", "step"]) == 2
    assert "error: --compile-mode step cannot train --amp-dtype fp16" in capsys.readouterr().err


def test_gpu_matrix_runs_each_seed_pipeline_once_with_both_channel_layouts(monkeypatch, capsys):
    import bench.options
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr(bench.options, "dali_available", lambda: False)
    assert main(["list", "--channels", "seed,aligned", "--arch", "add"]) == 0
    assert capsys.readouterr().out.split() == ["add-maxpool-fp32-eager-contig-torch-b32-e3",
                                               "add-maxpool-fp32-eager-contig-resident-b32",
                                               "add-maxpool-aligned-fp32-eager-contig-resident-b32"]
