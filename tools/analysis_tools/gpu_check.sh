#!/usr/bin/env bash
# GPU check: the model zoo's columns (train s/iter, train memory, inference fps) of the reference fp16
# configs against their fp32 twins, on synthetic 1333x800 data, in a few minutes on one CUDA GPU.
#
#   tools/analysis_tools/gpu_check.sh
#
# Environment: PYTHON (default python), TRAIN_ITERS (measured training iterations, default 30),
# FPS_ITERS (inference iterations, default 50), WARMUP (default 5), RUN_TIMEOUT (seconds per config, 150).
#
# For each of faster_rcnn, mask_rcnn, retinanet, one `benchmark.py configs/fp16/<name>_r50_fpn_fp16_1x_coco.py
# --train` run trains and then times inference twice, each in a fresh process: without the `fp16` key
# (that is configs/<name>/<name>_r50_fpn_1x_coco.py, the fp32 twin: checked below) and with it.
# The data is the shapes dataset generated at 1333 px (landscape and portrait, resized by the COCO
# pipeline to at most 1333x800), 2 images per iteration as in the configs; random weights (no ImageNet
# file needed). mmdetection v2's fp16 rows on a V100: 3.4 / 3.6 / 2.8 GB, 28.8 / 24.1 / 31.6 fps.
#
# Exit codes: 0 done, or CUDA is not available (it says so and measures nothing);
#             1 a benchmark run failed or timed out; 2 a reference config is missing.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PYTHON=${PYTHON:-python}
TRAIN_ITERS=${TRAIN_ITERS:-30}
FPS_ITERS=${FPS_ITERS:-50}
WARMUP=${WARMUP:-5}
RUN_TIMEOUT=${RUN_TIMEOUT:-150}
MODELS=(faster_rcnn mask_rcnn retinanet)
declare -A REF_MEM=([faster_rcnn]=3.4 [mask_rcnn]=3.6 [retinanet]=2.8)
declare -A REF_FPS=([faster_rcnn]=28.8 [mask_rcnn]=24.1 [retinanet]=31.6)

if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "gpu_check: CUDA is not available (torch.cuda.is_available() is False): nothing was measured."
  echo "gpu_check: run it on a machine with an NVIDIA GPU and a CUDA build of PyTorch."
  exit 0
fi

for name in "${MODELS[@]}"; do
  for cfg in "configs/fp16/${name}_r50_fpn_fp16_1x_coco.py" "configs/${name}/${name}_r50_fpn_1x_coco.py"; do
    if [[ ! -f "$ROOT/$cfg" ]]; then
      echo "gpu_check: missing reference config $cfg" >&2
      exit 2
    fi
  done
done

WORK=$(mktemp -d -t gpu_check.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
cd "$ROOT"

echo "gpu_check: $("$PYTHON" -c 'import torch; print(torch.cuda.get_device_name(0), "| torch", torch.__version__)')"
echo "gpu_check: checking that each fp16 config is its fp32 twin plus the fp16 key"
"$PYTHON" - "${MODELS[@]}" <<'EOF'
import sys
from mixprec.config import load_config
for name in sys.argv[1:]:
    fp16 = load_config(f'configs/fp16/{name}_r50_fpn_fp16_1x_coco.py').to_dict()
    fp32 = load_config(f'configs/{name}/{name}_r50_fpn_1x_coco.py').to_dict()
    fp16.pop('fp16', None)
    if fp16 != fp32:
        keys = sorted(k for k in set(fp16) | set(fp32) if fp16.get(k) != fp32.get(k))
        print(f'gpu_check: warning: {name}: the fp16 config differs from its fp32 twin in {keys}; '
              f'the fp32 row is the fp16 config without fp16')
EOF

echo "gpu_check: generating synthetic shapes data at 1333 px in $WORK"
"$PYTHON" tools/misc/make_shapes.py "$WORK/shapes" --num-train 16 --num-val 8 --img-size 1333 --seed 0 >/dev/null
DATA_OPTS=(model.backbone.init_cfg=None)
for split in train val test; do
  ann=$([[ $split == train ]] && echo train || echo val)
  DATA_OPTS+=("data.$split.type=ShapesDataset"
              "data.$split.ann_file=$WORK/shapes/annotations/instances_$ann.json"
              "data.$split.img_prefix=$WORK/shapes/$ann/")
done

for name in "${MODELS[@]}"; do
  echo "gpu_check: $name: $TRAIN_ITERS training iterations (+$WARMUP warm-up) and $FPS_ITERS inference" \
       "iterations, fp32 then fp16"
  if ! timeout "$RUN_TIMEOUT" "$PYTHON" tools/analysis_tools/benchmark.py \
      "configs/fp16/${name}_r50_fpn_fp16_1x_coco.py" --train --train-iters "$TRAIN_ITERS" --warmup "$WARMUP" \
      --max-iter "$FPS_ITERS" --log-interval 100000 --cfg-options "${DATA_OPTS[@]}" > "$WORK/$name.txt"; then
    cat "$WORK/$name.txt" >&2
    echo "gpu_check: the $name benchmark failed or ran past ${RUN_TIMEOUT}s" >&2
    exit 1
  fi
done

echo
printf '%-12s %-16s %8s %15s %12s %22s\n' \
  model precision s/iter 'train mem (GB)' 'fps (img/s)' 'mmdet V100 fp16 (GB, fps)'
for name in "${MODELS[@]}"; do
  grep -E '^(fp32|b?float16 (master|autocast)) ' "$WORK/$name.txt" | sed -E 's/^(b?float16) (master|autocast)/\1_\2/' |
    while read -r precision s_iter mem_mb fps; do
      ref=$([[ $precision == fp32 ]] && echo '' || echo "${REF_MEM[$name]}, ${REF_FPS[$name]}")
      printf '%-12s %-16s %8.3f %15.2f %12.1f %22s\n' "$name" "$precision" "$s_iter" \
        "$(awk -v m="$mem_mb" 'BEGIN { print m / 1024 }')" "$fps" "$ref"
    done
  grep '^ratio' "$WORK/$name.txt" | sed "s/^/$name: /"
done
