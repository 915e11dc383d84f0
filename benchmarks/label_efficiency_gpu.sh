#!/usr/bin/env bash
# The label-efficiency protocol at its accelerator size: nnU-Net's own 3d_fullres plans on a finer phantom,
# the core arms (nnU-Net, A/A, supervised positive control, MGCL) and the frozen-feature probes, for a
# 10-minute run on one GPU.
#
#   benchmarks/label_efficiency_gpu.sh WORK OUT.json            # on the accelerator (size gpu, -device cuda)
#   SIZE=gpu-dryrun DEVICE=cpu nnUNet_n_proc_DA=0 benchmarks/label_efficiency_gpu.sh WORK OUT.json
#                                                               # the same code path, tiny, on a CPU
# The result is resumable (rerun the same command after an interruption). Training is seeded
# (nnunet_mgcl/seeding.py); on a GPU, atomics-based kernels keep rounding-level run-to-run differences.
set -euo pipefail
WORK=${1:?usage: $0 WORK OUT.json}
OUT=${2:?usage: $0 WORK OUT.json}
SIZE=${SIZE:-gpu}
DEVICE=${DEVICE:-cuda}
PYTHON=${PYTHON:-python}
export nnUNet_n_proc_DA=${nnUNet_n_proc_DA:-8}
export nnUNet_compile=${nnUNet_compile:-f}  # our choice: compiling each of ~20 short runs would cost more than it saves
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
exec "$PYTHON" "$HERE/label_efficiency.py" --size "$SIZE" --work "$WORK" -o "$OUT" -device "$DEVICE" \
  --arms nnU-Net A/A "supervised init" MGCL --probes
