#!/usr/bin/env bash
# The project's dependencies that the GPU machine's image lacks (arch, ruptures, plotly; its
# Python is 3.12), as wheels in .whl/ (ignored) for the device call to carry; tools/gpu-checks.sh
# installs them there. 12 MB. DALI is larger and travels in parts: ../shared/tools/dali-parts.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
  arch==8.0.0 ruptures==1.1.10 plotly==7.1.0 2>&1 | grep -v "is ignored: it is neither" || true
ls -la .whl
