"""What a training run costs in money: prices per hardware key, dollars per sample and per network.

Prices come from the user (cloud list prices change and differ per contract), as
`KEY=USD_PER_HOUR,KEY2=...` or a small CSV (`hardware_key,usd_per_hour`) or JSON
(`{"KEY": USD_PER_HOUR}`) file. The key is the run's hardware key (env.json `hardware_key`), so
one price list serves every machine a team benchmarks on.

- dollars per million training samples = price / 3600 / (samples/s) * 1e6
- dollars per trained network = price / 3600 * time to the target accuracy (s)

Either is NaN where its input was not measured (no throughput, target never reached, no price).
"""

import csv
import json
import math
from pathlib import Path


def _price(key: str, value, where: str) -> tuple[str, float]:
    key = str(key).strip()
    try:
        price = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: price of {key!r} is {value!r}, expected USD per hour as a number") from None
    if not key:
        raise ValueError(f"{where}: empty hardware key, expected KEY=USD_PER_HOUR")
    if not math.isfinite(price) or price < 0:
        raise ValueError(f"{where}: price of {key!r} is {value!r}, expected a finite USD per hour >= 0")
    return key, price


def _from_inline(spec: str) -> dict[str, float]:
    prices = {}
    for entry in filter(None, (part.strip() for part in spec.split(","))):
        key, sep, value = entry.partition("=")
        if not sep:
            raise ValueError(f"--price entry {entry!r}: expected KEY=USD_PER_HOUR")
        key, price = _price(key, value, f"--price entry {entry!r}")
        prices[key] = price
    if not prices:
        raise ValueError(f"--price {spec!r}: expected KEY=USD_PER_HOUR,... or a CSV/JSON file")
    return prices


def _from_json(path: Path) -> dict[str, float]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error.msg}, line {error.lineno})") from None
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path}: expected a JSON object of hardware key -> USD per hour")
    return dict(_price(key, value, str(path)) for key, value in data.items())


def _from_csv(path: Path) -> dict[str, float]:
    with path.open(newline="") as handle:
        rows = [row for row in csv.reader(handle) if row and any(cell.strip() for cell in row)]
    if rows and rows[0][0].strip().lower() in ("hardware_key", "key", "hardware"):
        rows = rows[1:]
    prices = {}
    for number, row in enumerate(rows, start=1):
        if len(row) != 2:
            raise ValueError(f"{path} row {number}: {row!r}, expected hardware_key,usd_per_hour")
        key, price = _price(row[0], row[1], f"{path} row {number}")
        prices[key] = price
    if not prices:
        raise ValueError(f"{path}: no prices, expected rows of hardware_key,usd_per_hour")
    return prices


def parse_prices(spec: str) -> dict[str, float]:
    """Hardware key -> USD per hour, from `KEY=USD,...` or a .csv/.json file; ValueError on bad input."""
    path = Path(spec)
    if path.suffix.lower() in (".csv", ".json"):
        if not path.is_file():
            raise ValueError(f"--price file {spec}: not found")
        return _from_json(path) if path.suffix.lower() == ".json" else _from_csv(path)
    return _from_inline(spec)


def _positive(value: float) -> bool:
    return value is not None and math.isfinite(value) and value > 0


def cost_columns(samples_per_s: float, time_to_target_s: float, usd_per_hour: float) -> dict:
    """Dollars per million training samples and per network trained to the target; NaN if unmeasured."""
    usd_per_s = usd_per_hour / 3600 if usd_per_hour is not None and math.isfinite(usd_per_hour) else math.nan
    per_million = usd_per_s / samples_per_s * 1e6 if _positive(samples_per_s) else math.nan
    per_network = usd_per_s * time_to_target_s if _positive(time_to_target_s) else math.nan
    return {"usd_per_million_samples": per_million, "usd_per_trained_network": per_network}
