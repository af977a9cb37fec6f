#!/usr/bin/env bash
# One command for a CUDA machine: the DiffSeg and SLiMe benchmarks on SD-shaped random weights at
# 512 px (bf16, batch sweep 1-32, torch.compile off and on), DiffewS per query (SD-2.1 shapes, bf16,
# cached vs uncached support, 1 and 5 shots), the runtime ceiling with a simulated 5 ms/image
# model, and `pytest -m gpu`; one JSON of figures. Every step has its own time limit (about 11
# minutes in all); a step that fails or runs out of time is recorded as such, the others still run.
#
#   bench/gpu_suite.sh [--out FILE]        # default: gpu_suite.json
#   bench/gpu_suite.sh --cpu-smoke         # each step with tiny sizes on the CPU (compile off)
#
# Exit status: 0 when every step passed, 1 when one failed, 2 without CUDA (and no --cpu-smoke).
set -u -o pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON="$(command -v python3)"
OUT="gpu_suite.json"
SMOKE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu-smoke) SMOKE=1 ;;
    --out) OUT="$2"; shift ;;
    -h|--help) sed -n 2,12p "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_suite.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

if [ "$SMOKE" = 0 ] && ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "gpu_suite.sh: no CUDA device visible to torch on this machine; run it on a GPU node, or use --cpu-smoke to dry-run every step on the CPU" >&2
  exit 2
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/labeler-gpu-suite.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
cd "$REPO" || exit 2

if [ "$SMOKE" = 1 ]; then
  DEVICE=cpu; DTYPE=float32; COMPILE_MODES="off"
  DIFFSEG=(--model tiny --images 1 --batch-sizes 1,2 --warmup 0)
  SLIME=(--models tiny --was fused --fit-steps 1 --images 1 --patch-batches 1,4)
  CEILING=(--images 6 --size 64x48 --segments 5 --batch-size 2 --shard-size 3)
  DIFFEWS=(--model tiny --shots 1,2 --size 64 --warmup 0 --repeats 1)
  LIMITS=(diffseg=400 slime=400 diffews=600 ceiling=120 pytest=300)
else
  DEVICE=cuda; DTYPE=bfloat16; COMPILE_MODES="off on"
  DIFFSEG=(--model sd15-random --images 16 --batch-sizes 1,2,4,8,16,32)
  SLIME=(--models sd21 --was fused --fit-steps 2 --images 2 --patch-batches 1,2,4,8,16,32)
  CEILING=(--images 512 --size 1024x768 --segments 30 --batch-size 16 --shard-size 128)
  DIFFEWS=(--model sd21 --shots 1,5 --size 512 --warmup 2 --repeats 8)
  LIMITS=(diffseg_off=80 diffseg_on=110 slime_off=70 slime_on=100 diffews=180 ceiling=40 pytest=60)
fi
THREADS=$(( $(nproc) > 3 ? $(nproc) - 2 : 1 ))  # the model's thread and the prefetch keep 2

limit() {  # limit STEP MODE: seconds for a step
  local key value
  for key in "$1_${2:-}" "$1"; do
    for value in "${LIMITS[@]}"; do
      [ "${value%%=*}" = "$key" ] && { echo "${value#*=}"; return; }
    done
  done
}

step() {  # step NAME SECONDS COMMAND...: run, keep its log and exit status
  local name="$1" seconds="$2"; shift 2
  echo "== $name (limit ${seconds}s)" >&2
  local started=$SECONDS
  timeout "$seconds" "$@" >"$WORK/$name.log" 2>&1
  echo "$? $((SECONDS - started))" >"$WORK/$name.status"
  tail -n 3 "$WORK/$name.log" >&2
}

for mode in $COMPILE_MODES; do
  flag=(); [ "$mode" = on ] && flag=(--compile)
  step "diffseg_compile_$mode" "$(limit diffseg "$mode")" "$PYTHON" bench/diffseg_bench.py \
    "${DIFFSEG[@]}" --device "$DEVICE" --dtype "$DTYPE" "${flag[@]}"
  step "slime_compile_$mode" "$(limit slime "$mode")" "$PYTHON" bench/slime_bench.py \
    "${SLIME[@]}" --device "$DEVICE" --dtype "$DTYPE" --json "$WORK/slime_compile_$mode.json" "${flag[@]}"
done
step diffews "$(limit diffews)" "$PYTHON" bench/diffews_bench.py "${DIFFEWS[@]}" --device "$DEVICE" \
  --dtype "$DTYPE" --json "$WORK/diffews.json"
step ceiling "$(limit ceiling)" "$PYTHON" bench/runtime_ceiling.py "${CEILING[@]}" \
  --model-ms-per-image 5 --postprocess-threads "$THREADS" --json
step pytest_gpu "$(limit pytest)" "$PYTHON" -m pytest -q -m gpu -p no:cacheprovider \
  --junitxml "$WORK/pytest_gpu.xml" tests/test_gpu.py

"$PYTHON" - "$WORK" "$OUT" "$SMOKE" <<'PY'
"""Gather the steps' figures into one JSON: status, seconds and figures per step."""
import json
import platform
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import torch

work, out, smoke = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1"


def last_json(text):
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return None


suite = {"suite": "gpu_suite", "cpu_smoke": smoke, "python": platform.python_version(),
         "torch": torch.__version__, "cuda": torch.version.cuda,
         "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
         "steps": {}}
for status_file in sorted(work.glob("*.status")):
    name = status_file.stem
    code, seconds = (int(part) for part in status_file.read_text().split())
    log = (work / f"{name}.log").read_text(errors="replace")
    entry = {"status": "passed" if code == 0 else "timeout" if code == 124 else "failed",
             "exit_code": code, "seconds": seconds}
    try:
        if (work / f"{name}.json").exists():
            entry["figures"] = json.loads((work / f"{name}.json").read_text())
        elif name == "pytest_gpu" and (work / "pytest_gpu.xml").exists():
            suite_node = ElementTree.parse(work / "pytest_gpu.xml").getroot()
            suite_node = suite_node if suite_node.tag == "testsuite" else suite_node[0]
            entry["figures"] = {key: int(suite_node.get(key, 0))
                                for key in ("tests", "failures", "errors", "skipped")}
        elif not name.startswith("pytest"):
            entry["figures"] = last_json(log)
    except (ValueError, OSError) as error:
        entry["figures_error"] = str(error)
    if code != 0:
        entry["log_tail"] = log[-2000:]
    suite["steps"][name] = entry
suite["passed"] = all(step["status"] == "passed" for step in suite["steps"].values())
out.write_text(json.dumps(suite, indent=2) + "\n")
sys.stdout.write(json.dumps({name: step["status"] for name, step in suite["steps"].items()}) + "\n")
sys.stdout.write(f"figures written to {out}\n")
sys.exit(0 if suite["passed"] else 1)
PY
