import json
import math

import pytest

from reports.cost import cost_columns, parse_prices


def test_inline_prices():
    assert parse_prices("nvidia-h200=3.5, cpu-x86=0.1") == {"nvidia-h200": 3.5, "cpu-x86": 0.1}


def test_csv_prices_with_header(tmp_path):
    path = tmp_path / "prices.csv"
    path.write_text("hardware_key,usd_per_hour\nnvidia-h200,3.5\n\nnvidia-a100,1.25\n")
    assert parse_prices(str(path)) == {"nvidia-h200": 3.5, "nvidia-a100": 1.25}


def test_json_prices(tmp_path):
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"nvidia-h200": 3.5}))
    assert parse_prices(str(path)) == {"nvidia-h200": 3.5}


@pytest.mark.parametrize("spec, named", [("h200", "'h200'"), ("h200=cheap", "'h200=cheap'"),
                                         ("h200=-1", "'h200=-1'"), ("=3", "'=3'"), ("", "''")])
def test_bad_inline_entry_is_named(spec, named):
    with pytest.raises(ValueError, match=named) as error:
        parse_prices(spec)
    assert "\n" not in str(error.value)


def test_bad_files_are_named(tmp_path):
    missing = tmp_path / "missing.csv"
    with pytest.raises(ValueError, match="missing.csv"):
        parse_prices(str(missing))
    broken = tmp_path / "broken.json"
    broken.write_text("{nope")
    with pytest.raises(ValueError, match="broken.json"):
        parse_prices(str(broken))
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("nvidia-h200,3.5,extra\n")
    with pytest.raises(ValueError, match="wrong.csv row 1"):
        parse_prices(str(wrong))


def test_cost_known_answer():
    # 3.6 $/h = 0.001 $/s; 1000 samples/s -> 1e6 samples in 1000 s = 1 $; 500 s to target = 0.5 $
    cost = cost_columns(1000.0, 500.0, 3.6)
    assert cost["usd_per_million_samples"] == pytest.approx(1.0)
    assert cost["usd_per_trained_network"] == pytest.approx(0.5)


@pytest.mark.parametrize("samples, target, price, nan_keys", [
    (math.nan, 500.0, 3.6, {"usd_per_million_samples"}),
    (0.0, 500.0, 3.6, {"usd_per_million_samples"}),
    (1000.0, math.nan, 3.6, {"usd_per_trained_network"}),
    (1000.0, 500.0, math.nan, {"usd_per_million_samples", "usd_per_trained_network"}),
])
def test_unmeasured_inputs_give_nan(samples, target, price, nan_keys):
    cost = cost_columns(samples, target, price)
    assert {key for key, value in cost.items() if math.isnan(value)} == nan_keys
