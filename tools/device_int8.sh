#!/usr/bin/env bash
# INT8 against FP32 on another CPU (the lent machine's), in one go and in under 6 minutes: which
# int8 instructions the CPU has, then tools/bench_export.py with INT8 rows at all cores and at 4
# threads, its tables in $OUT/int8.txt. Nothing is downloaded.
#
# Needs, beside the working tree (carry it: it is git-ignored, about 60 MB):
#   runs/int8_device/model.pt           the raccoon recipe's weights (model, config and classes only)
#   runs/int8_device/model.int8.onnx    `detector export --weights model.pt --int8` of them, made where the
#                                       raccoon training set is (its gate AP is in the file's metadata)
#   runs/int8_device/detdata/raccoon/   8 raccoon val photos, the bench's photos
# and, when the machine lacks a package the bench imports, its wheels in .whl/ (none are needed
# with torch, torchvision, onnx, onnxruntime, numpy, PyYAML and opencv installed).
#
#   OUT=/some/folder bash tools/device_int8.sh
set -uo pipefail
cd "$(dirname "$0")/.."
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD
out=${OUT:-runs/device_int8}
mkdir -p "$out"
data=runs/int8_device
started=$(date +%s)
{
  echo "== CPU"
  lscpu | grep -E "^(Model name|CPU\(s\)|Thread\(s\) per core|Core\(s\) per socket|Socket\(s\))" || true
  flags=$(grep -m1 '^flags' /proc/cpuinfo)
  for flag in avx2 avx512f avx512_vnni avx_vnni amx_int8 avx512_bf16 amx_bf16; do
    case " $flags " in *" $flag "*) echo "  $flag: yes" ;; *) echo "  $flag: no" ;; esac
  done
  echo "== packages"
  python3 - <<'EOF'
import importlib
for name in ("torch", "torchvision", "onnx", "onnxruntime", "numpy", "cv2", "yaml", "openvino"):
    try:
        module = importlib.import_module(name)
        print(f"  {name} {getattr(module, '__version__', '?')}")
    except ImportError as error:
        print(f"  {name}: missing ({error})")
EOF
  for file in "$data/model.pt" "$data/model.int8.onnx" "$data/detdata/raccoon/coco_val.json"; do
    [ -f "$file" ] || { echo "missing $file: carry runs/int8_device (see the head of this script)"; exit 2; }
  done
  for threads in 0 4; do  # 0: every core (the runtimes' default); 4: as onnx/models measured its INT8 Faster R-CNN
    echo "== tools/bench_export.py, $([ "$threads" = 0 ] && echo "all cores" || echo "$threads threads")"
    DETECTOR_DATA=$data/detdata timeout "${BENCH_TIMEOUT:-150}" python3 -u tools/bench_export.py --weights "$data/model.pt" \
      --int8 "$data/model.int8.onnx" --images 8 --rounds 3 $([ "$threads" = 0 ] || echo "--threads $threads")
    echo "(exit $?, $(( $(date +%s) - started )) s since the start)"
  done
} 2>&1 | tee "$out/int8.txt"
