#!/usr/bin/env bash
# The measurement campaign on a GPU machine: one script, one run, everything it
# finished comes back even if it is cut short.
#
#   build the kernels (sm_90) -> check them against the CPU twins -> quick sweep ->
#   as much of the full sweep as the time budget allows -> nvidia-smi -q before and after
#
# Run from the project root. The machine has no network: benchmarks/gpu_prepare.sh puts
# the PyCUDA and SimPy wheels and tvwsim's pure-Python dependencies in ./.whl (carried),
# installed here into /tmp/site; benchmarks/namespace_tree.sh makes the checkout
# importable as tvwsim.* without pip. Results go to $OUT (default
# ./campaign-out), at most 8 files:
#
#   nvidia-smi-before.txt, nvidia-smi-after.txt   full `nvidia-smi -q` (clocks, throttling)
#   build.log, manifest.json                      nvcc build and its resource manifest
#   check.log                                     `tvwsim kernels check` table
#   <device>-<date>.jsonl                         the measurements (quick, then full)
#   <device>-<date>.jsonl.failed.jsonl            points that crashed (skipped next time)
#   validate.log                                  sweep progress, skipped and failed points
#
# Environment:
#   BUDGET_S     wall seconds for the whole script (default 540, under a 600 s limit);
#                every step is bounded by what is left, and the sweeps stop starting new
#                points in time to write their last row and exit cleanly
#   RESUME_FROM  an earlier measurement file (e.g. traces/measured/h100-20260101.jsonl):
#                copied to $OUT first, so the sweeps skip the points it already holds
#   ARCH         nvcc target (default sm_90)
#
# Every step is tolerant: a failed step is logged and the script goes on to the next one
# that can still run, and always ends with nvidia-smi -q and a summary.

set -u
cd "$(dirname "$0")/.."

BUDGET_S=${BUDGET_S:-540}
ARCH=${ARCH:-sm_90}
OUT=${OUT:-$PWD/campaign-out}
mkdir -p "$OUT"
START=$SECONDS

left() { echo $((BUDGET_S - (SECONDS - START))); }
note() { echo "[campaign +$((SECONDS - START))s] $*"; }
# run_for SECONDS LOG CMD...: run CMD under a timeout (SIGTERM, then SIGKILL 20 s later),
# appending its output to LOG and echoing it; never fails the script.
run_for() {
    local limit=$1 log=$2
    shift 2
    if [ "$limit" -lt 5 ]; then
        note "no time left for: $*" | tee -a "$log"
        return 124
    fi
    note "running ($limit s max): $*" | tee -a "$log"
    timeout -s TERM -k 20 "$limit" "$@" >>"$log" 2>&1
    local rc=$?
    note "exit $rc: ${*:1:5}" | tee -a "$log"
    return $rc
}

# -- 0. the device, before anything runs ------------------------------------------------
nvidia-smi -q >"$OUT/nvidia-smi-before.txt" 2>&1 || note "nvidia-smi -q failed"
NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
SLUG=$(echo "$NAME" | tr 'A-Z' 'a-z' | grep -oE 'h100|h200|a100|v100|l40s?|rtx ?[0-9]{4}' | head -1 | tr -d ' ')
MEAS="$OUT/${SLUG:-gpu}-$(date -u +%Y%m%d).jsonl"
note "device: ${NAME:-unknown}; measurements -> $MEAS"

# -- 1. Python environment --------------------------------------------------------------
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
        || note "wheel install failed"
else
    note "no .whl/ directory: assuming pycuda and simpy are importable"
fi
# The checkout as the installed namespace (tvwsim.sim is ./sim, ...), without pip.
benchmarks/namespace_tree.sh /tmp/tvwsim-src || note "namespace tree failed"
export PYTHONPATH=/tmp/site:/tmp/tvwsim-src${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
TVWSIM=(python3 -m tvwsim)
python3 -c "import numpy, numba, scipy, simpy, pydantic, pycuda, tvwsim.validate.runner; print('imports ok')" \
    || note "an import failed: later steps may fail"

if [ -n "${RESUME_FROM:-}" ] && [ -f "$RESUME_FROM" ] && [ ! -e "$MEAS" ]; then
    cp "$RESUME_FROM" "$MEAS" && note "resuming from $RESUME_FROM ($(wc -l <"$MEAS") rows)"
    if [ -f "$RESUME_FROM.failed.jsonl" ]; then
        cp "$RESUME_FROM.failed.jsonl" "$MEAS.failed.jsonl"
    fi
fi

# -- 2. build the kernels for this GPU ---------------------------------------------------
build_limit=$(($(left) < 180 ? $(left) : 180))
run_for "$build_limit" "$OUT/build.log" "${TVWSIM[@]}" kernels build --arch "$ARCH" --build-dir build/kernels
cp build/kernels/manifest.json "$OUT/manifest.json" 2>/dev/null || note "no manifest.json"

# -- 3. correctness of every kernel against its CPU twin ---------------------------------
check_limit=$(($(left) - 240 < 120 ? $(left) - 240 : 120))
run_for "$check_limit" "$OUT/check.log" "${TVWSIM[@]}" kernels check --build-dir build/kernels

# -- 4. quick sweep, then as much of the full sweep as fits -------------------------------
# Leave 40 s at the end for nvidia-smi and the summary; --budget-s stops a sweep from
# starting a point it cannot finish, the timeout is only the backstop.
for sweep in quick full; do
    limit=$(($(left) - 40))
    run_for "$limit" "$OUT/validate.log" "${TVWSIM[@]}" validate --sweep "$sweep" \
        --out "$MEAS" --build-dir build/kernels --budget-s $((limit > 60 ? limit - 45 : 15))
done

# -- 5. the device after, and what came back ----------------------------------------------
nvidia-smi -q >"$OUT/nvidia-smi-after.txt" 2>&1 || note "nvidia-smi -q failed"
if [ -f "$MEAS" ]; then
    python3 - "$MEAS" <<'EOF' || note "summary failed"
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip().endswith("}")]
ours = [r for r in rows if r["implementation"] == "tvwsim"]
wrong = [r["point"] for r in rows if r.get("correct") is False]
print(f"{len(rows)} rows ({len(ours)} tvwsim kernels, {len(rows) - len(ours)} vendor); "
      f"{len(wrong)} incorrect")
for key in wrong:
    print("  incorrect:", key)
EOF
fi
note "done; files in $OUT:"
ls -l "$OUT"
