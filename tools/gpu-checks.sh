#!/usr/bin/env bash
# The GPU checks the CPU cannot make, in one command for a lent GPU machine (its image has torch,
# Triton, pandas, scipy, pytest-benchmark and nvidia-ml-py; tools/gpu-wheels.sh packs the rest
# into .whl/, which the call carries and which is installed where they do not import; DALI's
# parts, where earlier calls copied them to /tmp/p, are installed too). Run from the checkout's root:
#
#   bash tools/gpu-checks.sh [--dry-run] STEP...   steps in the order given (the issue asking for each);
#   --dry-run prints their commands and runs nothing:
#     doctor      python -m bench doctor                                               (15)
#     pytest-gpu  pytest -m gpu                                                        (15)
#     add-matrix  add, bf16, reduce-overhead,step, seed,aligned widths, channels_last,
#                 batch 32,512, resident loader, 3 epochs: harness efficiency,
#                 step capture and the aligned figures                                 (15)
#     headline    python -m bench all --amp --compile --epochs 3                       (15)
#     default     python -m bench all, timed: the default GPU run's 8-minute estimate  (15)
#     regression  the regression suite's JSON twice, for the history                  (17)
#
# Each step writes its log and run directory under $OUT/work/<step>/ and a line (step, exit code,
# seconds) to $OUT/summary.tsv as it ends; after each step $OUT/work is packed again into
# $OUT/gpu-checks.tar.gz (the device tool returns at most 8 files), so a call stopped at its time
# limit still brings back every step it finished. STEP_TIMEOUT_S (default 540) bounds each step.
set -uo pipefail
cd "$(dirname "$0")/.."
dry_run=0
if [ "${1:-}" = --dry-run ]; then dry_run=1; shift; fi
[ $# -gt 0 ] || { echo "usage: bash tools/gpu-checks.sh [--dry-run] STEP..." >&2; exit 2; }
STEPS="doctor, pytest-gpu, add-matrix, headline, default or regression"

step_command() {
  local dir=$1
  case $2 in
    doctor) echo "python3 -m bench doctor --out $dir/doctor.md" ;;
    pytest-gpu) echo "python3 -m pytest -m gpu -q -p no:cacheprovider" ;;
    add-matrix) echo "python3 -m bench all --arch add --amp --compile --compile-mode reduce-overhead,step \
--channels seed,aligned --memory-format channels_last --batch-size 32,512 --loader resident --epochs 3 \
--no-progress --out $dir/run" ;;
    headline) echo "python3 -m bench all --amp --compile --epochs 3 --no-progress --out $dir/run" ;;
    default) echo "python3 -m bench all --no-progress --out $dir/run" ;;
    regression) echo "python3 -m pytest tests/test_benchmarks.py --benchmark-enable -p no:cacheprovider \
--benchmark-json=$dir/bench-1.json && python3 -m pytest tests/test_benchmarks.py --benchmark-enable \
-p no:cacheprovider --benchmark-json=$dir/bench-2.json" ;;
    *) return 1 ;;
  esac
}

for step in "$@"; do  # every step known before any runs: a typo costs no device time
  step_command "" "$step" > /dev/null || { echo "unknown step '$step': $STEPS" >&2; exit 2; }
done
if [ $dry_run = 1 ]; then
  for step in "$@"; do step_command "${OUT:-\$OUT}/work/$step" "$step"; done
  exit 0
fi

: "${OUT:?OUT must name the folder to write to}"
export PYTHONUNBUFFERED=1
if ! python3 -c "import arch, ruptures, plotly" 2> /dev/null && compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "installing .whl/ failed" >&2; exit 1; }
fi
if compgen -G "/tmp/p/dali-p?" > /dev/null; then  # DALI's parts, copied by the calls before (dali-parts.sh)
  cat /tmp/p/dali-p? > /tmp/dali.tar && tar xf /tmp/dali.tar -C /tmp &&
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/dl/*.whl &&
    PYTHONPATH=/tmp/site python3 -c "import nvidia.dali as d; print('dali', d.__version__)" \
    || { echo "installing DALI failed" >&2; exit 1; }
fi
[ -d /tmp/site ] && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
work="$OUT/work"
mkdir -p "$work"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true

for step in "$@"; do
  dir="$work/$step"
  mkdir -p "$dir"
  command=$(step_command "$dir" "$step")
  echo "== $step: $command"
  start=$(date +%s)
  timeout "${STEP_TIMEOUT_S:-540}" bash -c "$command" > "$dir/log.txt" 2>&1
  rc=$?
  seconds=$(( $(date +%s) - start ))
  printf '%s\t%s\t%s\n' "$step" "$rc" "$seconds" | tee -a "$OUT/summary.tsv"
  tail -n 5 "$dir/log.txt"
  tar czf "$OUT/gpu-checks.tar.gz" -C "$OUT" work
done
