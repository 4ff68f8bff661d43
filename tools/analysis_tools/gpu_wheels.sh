#!/usr/bin/env bash
# Download, where pip reaches PyPI, the wheels that gpu_check.sh installs on a GPU machine that has none.
#
#   tools/analysis_tools/gpu_wheels.sh DIR [PYTHON_VERSION]     (default 3.12; e.g. .whl, ignored by git)
#
# They are the packages mixprec needs beyond a PyTorch GPU image (torch, torchvision, numpy, OpenCV,
# matplotlib, PyYAML, Pillow, rich, tqdm): mmcv-lite, mmengine, pycocotools, and their own needs addict,
# yapf, platformdirs, termcolor, at the versions this project is tested with; binary wheels only, for
# CPython PYTHON_VERSION on manylinux x86_64, each named (no dependency resolution: the image's own
# packages stay as they are). About 2 MB. Then on the GPU machine: gpu_check.sh --wheels DIR.
set -euo pipefail

DIR=${1:?usage: gpu_wheels.sh DIR [PYTHON_VERSION]}
PY_VERSION=${2:-3.12}
PYTHON=${PYTHON:-python3}
PACKAGES=(mmcv-lite==2.2.0 mmengine==0.10.7 pycocotools==2.0.11 addict==2.4.0 yapf==0.43.0 platformdirs==4.14.9
          termcolor==3.3.0)
mkdir -p "$DIR"
"$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version "$PY_VERSION" --implementation cp --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$DIR" "${PACKAGES[@]}"
echo "gpu_wheels: ${#PACKAGES[@]} packages in $DIR for CPython $PY_VERSION on manylinux x86_64; on the GPU" \
     "machine: tools/analysis_tools/gpu_check.sh --wheels $DIR"
