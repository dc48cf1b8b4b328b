#!/usr/bin/env bash
# GPU check: one short prepared run for a machine with an accelerator (under 8 minutes; installs nothing
# beyond this project). Paper-shape components with random weights, forward + backward in bf16; prints
# tokens/s, MFU, peak memory and the overhead ratios, and writes them to ${GPU_CHECK_OUT:-gpu_check.json}.
# Without CUDA it runs the same code at reduced shapes (tested in CI).
#   bash benchmarks/gpu_check.sh            # size: paper on a GPU, cpu elsewhere
#   GPU_CHECK_SIZE=cpu GPU_CHECK_STEPS=1 bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ]; then PY=.venv/bin/python; fi
export HF_HUB_OFFLINE=1
# installed, not merely importable from the repository root (gpu_check.py runs from benchmarks/)
if ! (cd / && "$PY" -c "import pvit, pvit_regionclip") 2>/dev/null; then
  # this project only, from the working tree: no index, no build isolation, no dependencies fetched
  "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e . 
fi
SIZE="${GPU_CHECK_SIZE:-$("$PY" -c "import torch; print('paper' if torch.cuda.is_available() else 'cpu')")}"
exec timeout "${GPU_CHECK_TIMEOUT:-480}" "$PY" benchmarks/gpu_check.py --size "$SIZE" \
  --steps "${GPU_CHECK_STEPS:-5}" --out "${GPU_CHECK_OUT:-gpu_check.json}"
