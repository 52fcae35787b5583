"""The CI workflows parse, and every command they run exists in the project with those options."""

import os
import re
import shlex
from pathlib import Path

import pytest
import yaml

from bench.cli import COMMANDS, parser

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"


def load(name: str) -> dict:
    return yaml.safe_load((WORKFLOWS / name).read_text())


def run_lines(workflow: dict) -> list[str]:
    """Every shell line of every `run:` step, continuation lines joined."""
    lines = []
    for job in workflow["jobs"].values():
        for step in job["steps"]:
            lines += step.get("run", "").replace("\\\n", " ").splitlines()
    return [line.strip() for line in lines if line.strip()]


def commands(pattern: str) -> list[list[str]]:
    found = []
    for name in ("ci.yml", "gpu-benchmarks.yml"):
        for line in run_lines(load(name)):
            found += [shlex.split(m) for m in re.findall(pattern, line)]
    return found


BENCH_CALLS = commands(r"python -m bench [^;&|]+")


def test_ci_runs_the_project_script_on_a_hosted_runner():
    ci = load("ci.yml")
    job = ci["jobs"]["tests"]
    assert job["runs-on"] == "ubuntu-latest" and ".ci/run" in run_lines(ci)
    assert os.access(ROOT / ".ci" / "run", os.X_OK)


def test_gpu_workflow_runs_on_the_gpu_runner_and_keeps_its_results():
    workflow = load("gpu-benchmarks.yml")
    job = workflow["jobs"]["benchmarks"]
    assert {"self-hosted", "gpu"} <= set(job["runs-on"])
    script = "\n".join(run_lines(workflow))
    assert 'pip install -e ".[dali,dev]"' in script
    assert "--benchmark-json=bench.json" in script and "GITHUB_STEP_SUMMARY" in script
    upload = [s for s in job["steps"] if s.get("uses", "").startswith("actions/upload-artifact")]
    assert upload and {"runs/", "bench.json"} <= set(upload[0]["with"]["path"].split())
    called = [call[3] for call in BENCH_CALLS]
    assert called[:2] == ["doctor", "gate"] and "all" in called and "compare" in called


@pytest.mark.parametrize("call", BENCH_CALLS, ids=[" ".join(c[3:5]) for c in BENCH_CALLS])
def test_every_bench_command_exists_with_its_options(call):
    assert call[3] in COMMANDS, f"python -m bench {call[3]}: no such command"
    parser().parse_args(call[3:])  # unknown options exit with status 2


def test_every_pytest_path_exists():
    calls = commands(r"python -m pytest [^;&|]+")
    assert calls
    for call in calls:
        paths = [arg for arg in call[3:] if ".py" in arg or arg.startswith("tests")]
        assert paths, f"{' '.join(call)}: runs no test path"
        for path in paths:
            assert (ROOT / path.split("::")[0]).exists(), path
