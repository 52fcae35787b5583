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


def test_variant_filter_matching_nothing_is_an_error():
    with pytest.raises(SystemExit, match="matches none"):
        main(["list", "--variants", "nothing-like-this"])


def test_aligned_channels_are_named_only_when_set():
    assert Variant("add", "maxpool", "bf16", channels="aligned").name == "add-maxpool-aligned-bf16-eager-contig-torch-b32"
    assert "seed" not in Variant("add").name and Variant("add").channels == "seed"
    matrix = build_matrix(["add"], channels=["seed", "aligned"])
    assert [v.name for v in matrix] == ["add-maxpool-fp32-eager-contig-torch-b32", "add-maxpool-aligned-fp32-eager-contig-torch-b32"]
    assert matrix[1].settings()["channels"] == "aligned"
    assert filter_variants(matrix, ["aligned"]) == [matrix[1]]

