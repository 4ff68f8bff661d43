#!/usr/bin/env bash
# The GPU check in one command, on a bare GPU machine: correctness of float16 training, then the seed
# table's fp16 / fp32 ratios, for Faster R-CNN, Mask R-CNN and RetinaNet (tools/analysis_tools/gpu_check.py
# says what it measures and prints).
#
#   tools/analysis_tools/gpu_check.sh [--wheels DIR] [--out DIR] [gpu_check.py options: --models, --dry-run, ...]
#
# Dependencies. Beyond what a PyTorch GPU image holds (torch, torchvision, numpy, OpenCV, matplotlib,
# PyYAML, Pillow, rich, tqdm), mixprec needs mmcv-lite, mmengine and pycocotools, and they need addict,
# yapf, platformdirs and termcolor. A machine without a package registry gets them as wheels:
#   1. where pip reaches PyPI: tools/analysis_tools/gpu_wheels.sh .whl   (CPython 3.12, manylinux x86_64;
#      .whl/ is ignored by git: carry it along with the checkout, or put it in the shared folder)
#   2. on the GPU machine: tools/analysis_tools/gpu_check.sh --wheels .whl   (or GPU_CHECK_WHEELS=.whl)
# They go in with `pip install --no-index --no-deps --target` into a temporary folder put first on
# PYTHONPATH, so nothing of the machine's Python changes. Where the packages import already, no wheels
# are needed. A missing package and no usable wheel folder: one line, exit code 2.
#
# Time: the whole check stops after GPU_CHECK_TIMEOUT seconds (default 480); the detectors share
# GPU_CHECK_BUDGET seconds of it (default 420), each in its own process.
#
# Raw outputs: the folder --out (default work_dirs/gpu_check/<date>_<time>), named at the start:
# install.log (the wheels' installation), environment.json, results.jsonl, <model>.log, summary.txt.
# To bring them back from a remote machine in one file: tar czf gpu_check.tgz -C DIR .
#
# Exit codes: gpu_check.py's (0 measured and correct; 1 a detector failed, ran out of time or was
# incorrect; 3 no CUDA); 2 a dependency is missing or its wheels did not install; 124 past GPU_CHECK_TIMEOUT.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PYTHON=${PYTHON:-python3}
WHEELS=${GPU_CHECK_WHEELS:-}
OUT=''
ARGS=()
while (($#)); do
  case $1 in
    --wheels) WHEELS=${2:-}; shift $(($# > 1 ? 2 : 1)) ;;
    --wheels=*) WHEELS=${1#--wheels=}; shift ;;
    --out) OUT=${2:-}; shift $(($# > 1 ? 2 : 1)) ;;
    --out=*) OUT=${1#--out=}; shift ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
OUT=${OUT:-$ROOT/work_dirs/gpu_check/$(date +%Y%m%d_%H%M%S)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# the modules of mixprec's dependencies that this Python lacks (a space-separated list): the image's own
# large ones looked up, the others imported
missing() {
  "$PYTHON" - <<'EOF'
import importlib
import importlib.util
names = [m for m in ('torch', 'torchvision', 'numpy', 'cv2') if importlib.util.find_spec(m) is None]
for module in ('mmengine', 'mmcv', 'pycocotools.coco', 'yapf', 'addict', 'termcolor'):
    try:
        importlib.import_module(module)
    except Exception:
        names.append(module.split('.')[0])
print(' '.join(names))
EOF
}

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
MISSING=$(missing)
if [[ -n $MISSING ]]; then
  PY_VERSION=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  if [[ " $MISSING " == *' torch '* || " $MISSING " == *' torchvision '* ]]; then
    echo "gpu_check: $PYTHON cannot import $MISSING; the check needs a Python with PyTorch and torchvision (PYTHON=...)" >&2
    exit 2
  fi
  if [[ -z $WHEELS ]]; then
    echo "gpu_check: $PYTHON cannot import $MISSING and no wheel folder was given: run" \
         "tools/analysis_tools/gpu_wheels.sh DIR $PY_VERSION where pip reaches PyPI, then gpu_check.sh --wheels DIR" >&2
    exit 2
  fi
  shopt -s nullglob
  wheels=("$WHEELS"/*.whl)
  if ((${#wheels[@]} == 0)); then
    echo "gpu_check: the wheel folder $WHEELS $([[ -d $WHEELS ]] && echo 'holds no .whl file' || echo 'does not exist')" \
         "(make it with tools/analysis_tools/gpu_wheels.sh $WHEELS $PY_VERSION)" >&2
    exit 2
  fi
  SITE=$(mktemp -d -t gpu_check_site.XXXXXX)
  trap 'rm -rf "$SITE"' EXIT
  if ! "$PYTHON" -m pip install --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check \
      --target "$SITE" "${wheels[@]}" > "$OUT/install.log" 2>&1; then
    echo "gpu_check: installing the wheels of $WHEELS failed: $(grep -m1 -E 'ERROR|error' "$OUT/install.log" ||
          tail -n1 "$OUT/install.log") (all of it in $OUT/install.log)" >&2
    exit 2
  fi
  export PYTHONPATH="$SITE:$PYTHONPATH"
  MISSING=$(missing)
  if [[ -n $MISSING ]]; then
    echo "gpu_check: still cannot import $MISSING after installing the wheels of $WHEELS: they are not for this" \
         "Python ($PY_VERSION), or one is missing; rerun tools/analysis_tools/gpu_wheels.sh $WHEELS $PY_VERSION" >&2
    exit 2
  fi
  echo "gpu_check: installed ${#wheels[@]} wheels of $WHEELS for this run (not into $PYTHON's environment)"
fi

cd "$ROOT"
status=0
timeout "${GPU_CHECK_TIMEOUT:-480}" "$PYTHON" tools/analysis_tools/gpu_check.py --out "$OUT" \
  --budget "${GPU_CHECK_BUDGET:-420}" ${ARGS[@]+"${ARGS[@]}"} || status=$?
if ((status == 124)); then
  echo "gpu_check: stopped after ${GPU_CHECK_TIMEOUT:-480} s; what was measured is in $OUT" >&2
fi
exit $status
