#!/usr/bin/env bash
# Everything that needs a GPU, in one go and in under 8 minutes (the step limits add up to 470 s):
# the CUDA tests of the box ops (a kernel that falls back to torchvision fails them), the kernel
# benchmark table, and a 1-epoch demo training with AMP; then one summary. docs/BENCHMARKS.md
# says how to read it.
#
#   bash tools/gpu_check.sh [OUT_DIR]      # default runs/gpu_check; each step's full log is there
#
# Runs with .venv/bin/python when it exists, else python3 (or PYTHON=...); nothing is installed
# or downloaded. Exit status 0 when every step passed and no kernel fell back to torchvision.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/gpu_check}
mkdir -p "$out"
python=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
started=$(date +%s)
summary=()
failed=0

# step NAME LIMIT_S COMMAND...: run COMMAND with its output in $out/NAME.log, note rc and time.
step() {
  local name=$1 limit=$2 begin code
  shift 2
  begin=$(date +%s)
  echo "== $name (at most ${limit} s): $*"
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  code=$?
  local status="ok"
  [ "$code" -eq 124 ] && status="TIMED OUT after ${limit} s"
  [ "$code" -ne 0 ] && [ "$code" -ne 124 ] && status="FAILED (exit $code)"
  [ "$code" -ne 0 ] && failed=1
  summary+=("$(printf '%-6s %-28s %4d s' "$name" "$status" "$(( $(date +%s) - begin ))")")
}

step env 30 "$python" - <<'EOF'
import platform, torch
print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda})")
try:
    import triton
    print(f"triton {triton.__version__}")
except Exception as error:
    print(f"triton not importable: {error}")
if not torch.cuda.is_available():
    raise SystemExit("no CUDA device: this script checks the GPU paths")
for index in range(torch.cuda.device_count()):
    major, minor = torch.cuda.get_device_capability(index)
    print(f"GPU {index}: {torch.cuda.get_device_name(index)}, compute capability {major}.{minor}, "
          f"{torch.cuda.get_device_properties(index).total_memory / 2**30:.0f} GiB")
EOF
if [ "$failed" -ne 0 ]; then
  cat "$out/env.log"
  exit 2
fi

# The box-op tests on CUDA: every op against torchvision, the compiled kernels, the OOM fallback,
# and the first-call check of each kernel; a TritonFallbackWarning is an error here.
step tests 170 "$python" -m pytest -q -p no:cacheprovider -W error::detector.ops.TritonFallbackWarning tests/ops
step bench 140 "$python" tools/bench_kernels.py
step demo 130 "$python" -m detector.cli train configs/demo.yaml train.epochs=1 train.amp=true train.eval_every=1 \
  "output=$out/demo"

echo
echo "================ gpu_check summary ($(( $(date +%s) - started )) s in all; logs in $out) ================"
sed 's/^/  /' "$out/env.log"
printf '  %s\n' "${summary[@]}"
echo "-- tests:  $(grep -E '(passed|failed|error)' "$out/tests.log" | tail -1)"
grep -E '^(FAILED|ERROR) ' "$out/tests.log" | head -10 | sed 's/^/   /'
echo "-- kernels vs torchvision (ours = Triton):"
grep -E '^\|' "$out/bench.log" | sed 's/^/   /'
echo "-- demo, 1 epoch with AMP:"
grep -E '^(epoch [0-9]|val AP)' "$out/demo.log" | tail -3 | sed 's/^/   /'
fallbacks=$(grep -h "the Triton kernel" "$out"/*.log | sort -u)
if [ -n "$fallbacks" ]; then
  failed=1
  echo "-- kernels that fell back to torchvision:"
  echo "$fallbacks" | sed 's/^/   /'
else
  echo "-- no kernel fell back to torchvision"
fi
not_equal=$(grep -E '^\|' "$out/bench.log" | grep -cE '\| NO \|$')
[ "$not_equal" -gt 0 ] && failed=1 && echo "-- $not_equal benchmark rows are NOT equal to torchvision"
if [ "$failed" -eq 0 ]; then echo "gpu_check: PASS"; else echo "gpu_check: FAIL (see above and the logs)"; fi
exit "$failed"
