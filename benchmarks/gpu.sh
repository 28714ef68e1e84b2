#!/usr/bin/env bash
# The device check, as one call for a session lent a GPU (about 5 minutes of device time):
#     run(command="bash benchmarks/gpu.sh", timeout_s=480)
# The machine starts bare, without network, its python3 holding PyTorch and this project's
# dependencies: ticketkit installs from the working tree without them. What it prints comes
# back in $OUT (gpu.txt, gpu-tests.txt, gpu-step.txt); record the figures in RESULTS.md.
set -uo pipefail
OUT=${OUT:-/tmp/ticketkit-gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TICKETKIT_OFFLINE=1
python3 -m pip install -q --no-deps --no-index --no-build-isolation \
    -e . -e plugins-contrib/ticketkit-rigl -e plugins-contrib/ticketkit-supermask 2>&1 | tail -3
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/gpu.txt"
timeout 180 python3 -m pytest -q -m gpu -p no:cacheprovider -rs 2>&1 | tee "$OUT/gpu-tests.txt"
(cd benchmarks && timeout 240 python3 gpu_step.py --amp bf16 2>&1) | tee "$OUT/gpu-step.txt"
