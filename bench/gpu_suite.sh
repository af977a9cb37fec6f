#!/usr/bin/env bash
# One command for a CUDA machine (at most about 9.5 minutes, so it fits one device call):
#   diffseg_compile_off/on   DiffSeg on SD-1.5-shaped random weights at 512 px, bf16; batch sweep
#                            1,4,16 eager, 1,8 compiled (each shape's first batch, its
#                            compilation, kept apart from the steady state)
#   diffseg_post_random/world  DiffSeg's post-processing alone on the device, on the near-uniform
#                            attention of random weights and on synthetic-world attention
#   slime_compile_off/on     SLiMe on SD-2.1-shaped random weights (fit and inference eager;
#                            inference only compiled, first image apart)
#   diffews                  DiffewS per query, SD-2.1 shapes, cached vs uncached, 1 and 5 shots
#   ceiling                  the worker's shard path with a zero-cost model that burns 5 ms/image
#                            on the device and makes its label maps there (argmax, relabelling,
#                            the device-to-host copy), 512 images of 64 distinct ones
#   pool                     the host step on 1..N threads vs processes (the pool's real
#                            concurrency)
#   pytest_gpu               `pytest -m gpu`: tests/test_gpu.py, the model input on CUDA vs the CPU
# Every step runs under its own time limit with unbuffered output: its JSON lines reach the log as
# they are printed, so a step cut short keeps its figures so far. One JSON of everything (--out).
#
#   bench/gpu_suite.sh [--out FILE] [--wheelhouse DIR]   # default: gpu_suite.json
#   bench/gpu_suite.sh --cpu-smoke                       # every step, tiny sizes, on the CPU
#
# --wheelhouse DIR (made by bench/wheelhouse.sh): the packages the image lacks
# (bench/gpu_requirements.txt) are installed from DIR, offline, into a folder put on PYTHONPATH
# beside the machine's own packages (its torch and the rest), before the steps run.
# Exit status: 0 when every step passed, 1 when one failed, 2 without CUDA (and no --cpu-smoke).
set -u -o pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON="$(command -v python3)"
OUT="gpu_suite.json"
SMOKE=0
WHEELHOUSE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu-smoke) SMOKE=1 ;;
    --out) OUT="$2"; shift ;;
    --wheelhouse) WHEELHOUSE="$2"; shift ;;
    -h|--help) sed -n 2,26p "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_suite.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
OUT="$(cd "$(dirname "$OUT")" && pwd)/$(basename "$OUT")"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/labeler-gpu-suite.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
SITE=""
if [ -n "$WHEELHOUSE" ]; then  # exactly the listed wheels (the closure), beside the image's own
  SITE="$WORK/site"
  "$PYTHON" -m pip install --quiet --no-index --no-deps --find-links "$WHEELHOUSE" \
      --target "$SITE" -r "$REPO/bench/gpu_requirements.txt" \
    && PYTHONPATH="$SITE" "$PYTHON" -c 'import diffusers, pydantic, pycocotools.mask, simplejpeg' \
    || { echo "gpu_suite.sh: installing from $WHEELHOUSE failed" >&2; exit 2; }
fi

if [ "$SMOKE" = 0 ] && ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "gpu_suite.sh: no CUDA device visible to torch on this machine; run it on a GPU node, or use --cpu-smoke to dry-run every step on the CPU" >&2
  exit 2
fi

export PYTHONPATH="$REPO${SITE:+:$SITE}${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
cd "$REPO" || exit 2

POOL_WORKERS=$(( $(nproc) > 8 ? 8 : $(nproc) ))
THREADS=$(( $(nproc) > 3 ? $(nproc) - 2 : 1 ))  # the model's thread and the prefetch keep 2
if [ "$SMOKE" = 1 ]; then
  DEVICE=cpu; DTYPE=float32; COMPILE_MODES="off"
  DIFFSEG_off=(--model tiny --images 2 --batch-sizes 1,2 --warmup 1 --input-size 128)
  POST=(--images 1 --batch-sizes 1 --output-size 128 --sides 32,16,8)
  SLIME_off=(--models tiny --was fused --fit-steps 1 --images 1 --patch-batches 1,4 --input-size 64)
  DIFFEWS=(--model tiny --shots 1 --size 64 --warmup 0 --repeats 1)
  CEILING=(--images 64 --size 64x48 --segments 5 --batch-size 8 --shard-size 32 --device cpu)
  POOL=(--pool-scaling 2 --images 8 --size 64x48 --segments 5)
  # Generous: the smoke run checks that every step works, on CI runners and loaded machines alike.
  LIMITS=(diffseg=900 diffseg_post=600 slime=900 diffews=900 ceiling=600 pool=600 pytest=600)
else
  DEVICE=cuda; DTYPE=bfloat16; COMPILE_MODES="off on"
  DIFFSEG_off=(--model sd15-random --images 16 --batch-sizes 1,4,16)
  DIFFSEG_on=(--model sd15-random --images 8 --batch-sizes 1,8 --compile)
  POST=(--images 8 --batch-sizes 1,4 --output-size 512)
  SLIME_off=(--models sd21 --was fused --fit-steps 2 --images 2 --patch-batches 1,4,16)
  SLIME_on=(--models sd21 --was fused --fit-steps 0 --images 2 --patch-batches 8 --compile)
  DIFFEWS=(--model sd21 --shots 1,5 --size 512 --warmup 2 --repeats 8)
  CEILING=(--images 512 --size 1024x768 --segments 30 --batch-size 16 --shard-size 128
           --device cuda --postprocess-threads "$THREADS")
  POOL=(--pool-scaling "$POOL_WORKERS" --images 128 --size 1024x768 --segments 30)
  LIMITS=(diffseg_off=60 diffseg_on=100 diffseg_post=25 slime_off=70 slime_on=80 diffews=70
          ceiling=40 pool=30 pytest=40)
fi

limit() {  # limit STEP MODE: seconds for a step
  local key value
  for key in "$1_${2:-}" "$1"; do
    for value in "${LIMITS[@]}"; do
      [ "${value%%=*}" = "$key" ] && { echo "${value#*=}"; return; }
    done
  done
}

step() {  # step NAME SECONDS COMMAND...: run, keep its log, exit status, seconds and load
  local name="$1" seconds="$2"; shift 2
  echo "== $name (limit ${seconds}s, load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
  local started=$SECONDS load_before
  load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
  timeout "$seconds" "$@" >"$WORK/$name.log" 2>&1
  echo "$? $((SECONDS - started)) $load_before $(cut -d' ' -f1-3 /proc/loadavg)" >"$WORK/$name.status"
  tail -n 3 "$WORK/$name.log" >&2
}

for mode in $COMPILE_MODES; do
  diffseg="DIFFSEG_$mode[@]"; slime="SLIME_$mode[@]"
  step "diffseg_compile_$mode" "$(limit diffseg "$mode")" "$PYTHON" bench/diffseg_bench.py \
    "${!diffseg}" --device "$DEVICE" --dtype "$DTYPE"
  step "slime_compile_$mode" "$(limit slime "$mode")" "$PYTHON" bench/slime_bench.py \
    "${!slime}" --device "$DEVICE" --dtype "$DTYPE" --json "$WORK/slime_compile_$mode.json"
done
for attention in random world; do
  step "diffseg_post_$attention" "$(limit diffseg_post)" "$PYTHON" bench/diffseg_bench.py \
    --attention "$attention" "${POST[@]}" --device "$DEVICE"
done
step diffews "$(limit diffews)" "$PYTHON" bench/diffews_bench.py "${DIFFEWS[@]}" --device "$DEVICE" \
  --dtype "$DTYPE" --json "$WORK/diffews.json"
step ceiling "$(limit ceiling)" "$PYTHON" bench/runtime_ceiling.py "${CEILING[@]}" \
  --model-ms-per-image 5 --json
step pool "$(limit pool)" "$PYTHON" bench/runtime_ceiling.py "${POOL[@]}" --json
step pytest_gpu "$(limit pytest)" "$PYTHON" -m pytest -q -m gpu -p no:cacheprovider \
  --junitxml "$WORK/pytest_gpu.xml" tests/test_gpu.py tests/test_preprocess.py

"$PYTHON" bench/gpu_suite_report.py "$WORK" "$OUT" "$SMOKE"
