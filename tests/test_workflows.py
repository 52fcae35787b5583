"""The CI workflows parse, and every command they run exists in the project with those options."""

import os
import re
import shlex
import subprocess
import tarfile
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


def commands(pattern: str, names=("ci.yml", "gpu-benchmarks.yml")) -> list[list[str]]:
    found = []
    for name in names:
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
    called = [call[3] for call in commands(r"python -m bench [^;&|]+", ["gpu-benchmarks.yml"])]
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


def steps_of(job: dict) -> list[str]:
    return [line.strip() for step in job["steps"] for line in step.get("run", "").replace("\\\n", " ").splitlines()]


def test_gpu_workflow_keeps_main_results_in_the_history_and_publishes_the_site():
    jobs = load("gpu-benchmarks.yml")["jobs"]
    history, pages = jobs["history"], jobs["pages"]
    assert history["needs"] == "benchmarks" and "refs/heads/main" in history["if"] and "push" in history["if"]
    assert history["permissions"]["contents"] == "write" and history["concurrency"]["cancel-in-progress"] is False
    script = steps_of(history)
    assert "python -m bench history add runs/ci bench.json --store history/" in script
    assert "python -m bench history site --store history --out site" in script
    assert script.index("python -m bench history add runs/ci bench.json --store history/") < \
        script.index("git push origin benchmark-history") < \
        script.index("python -m bench history site --store history --out site")
    download = next(s for s in history["steps"] if s.get("uses", "").startswith("actions/download-artifact"))
    upload = next(s for s in jobs["benchmarks"]["steps"] if s.get("uses", "").startswith("actions/upload-artifact"))
    assert download["with"]["name"] == upload["with"]["name"]  # the artifact this commit's GPU job uploaded
    site = next(s for s in history["steps"] if s.get("uses", "").startswith("actions/upload-pages-artifact"))
    assert site["with"]["path"] == "site"
    assert pages["needs"] == "history" and pages["permissions"] == {"pages": "write", "id-token": "write"}
    assert [s["uses"].split("@")[0] for s in pages["steps"]] == ["actions/deploy-pages"]


def test_hosted_ci_builds_the_site_from_the_committed_results():
    script = run_lines(load("ci.yml"))
    assert "python -m bench history add $runs --store /tmp/h" in script
    assert "python -m bench history site --store /tmp/h --out /tmp/site" in script
    assert script.index(".ci/run") < script.index("python -m bench history site --store /tmp/h --out /tmp/site")
    assert list(ROOT.glob("results/*/*/env.json")), "no committed run directory for the smoke check"


# --- tools/gpu-checks.sh: the one command a lent GPU machine runs --------------------------

GPU_CHECKS = ROOT / "tools" / "gpu-checks.sh"
GPU_STEPS = ["doctor", "pytest-gpu", "add-matrix", "headline", "default", "regression"]


def gpu_checks(*args, out=None):
    env = {k: v for k, v in os.environ.items() if k != "OUT"} | ({"OUT": str(out)} if out else {})
    return subprocess.run(["bash", str(GPU_CHECKS), *args], capture_output=True, text=True, env=env, timeout=300)


def test_gpu_checks_commands_exist_with_their_options():
    done = gpu_checks("--dry-run", *GPU_STEPS)
    assert done.returncode == 0, done.stderr
    calls = [shlex.split(part) for line in done.stdout.splitlines() for part in line.split("&&")]
    assert len(calls) == len(GPU_STEPS) + 1  # the regression suite twice
    for call in calls:
        if call[:3] == ["python3", "-m", "bench"]:
            parser().parse_args(call[3:])  # unknown options exit with status 2
        else:
            assert call[:3] == ["python3", "-m", "pytest"]
            assert all((ROOT / arg).exists() for arg in call[3:] if arg.startswith("tests"))


def test_gpu_checks_refuses_an_unknown_step_before_running_any(tmp_path):
    done = gpu_checks("pytest-gpu", "doctr", out=tmp_path)
    assert done.returncode == 2 and "unknown step 'doctr'" in done.stderr and "doctor" in done.stderr
    assert not list(tmp_path.iterdir())


def test_gpu_checks_records_each_step_and_packs_its_output(tmp_path):
    done = gpu_checks("pytest-gpu", out=tmp_path)  # on a CPU its tests skip: the plumbing runs all the same
    assert done.returncode == 0, done.stderr
    step, rc, seconds = (tmp_path / "summary.tsv").read_text().split()
    assert (step, rc) == ("pytest-gpu", "0") and int(seconds) >= 0
    with tarfile.open(tmp_path / "gpu-checks.tar.gz") as packed:
        assert "work/pytest-gpu/log.txt" in packed.getnames()
