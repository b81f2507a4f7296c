#!/usr/bin/env bash
# The measurement campaign on a GPU machine: one script, one run, everything it
# finished comes back even if it is cut short. The steps are ordered so that the first
# minutes buy the most:
#
#   0. nvidia-smi -q (device, clocks, throttling)
#   1. Python environment: carried wheels; PyCUDA built on the machine if its wheel fails
#   2. build the kernels (sm_90, and on sm_90 also the warpgroup-MMA kernels for sm_90a)
#   3. one-warp mma / mma.sp probes (on sm_90 also the one-warpgroup wgmma / wgmma.sp
#      probes), then every kernel variant against its CPU twin
#   4. the quick sweep (our kernels, cuBLAS, cuSPARSELt, cuSPARSE), then hopper (the
#      sm_90a kernels beside the sm_80-style ones and the vendor libraries, same shapes)
#   5. the targets sweep (8192^3: dense vs cuBLAS, tw/tvw vs dense, tvw vs cuSPARSELt),
#      then grouped (natural vs grouped CTA order) and variants (8-warp tiles)
#   6. hardware counters of a few points under Nsight Compute (DRAM and L2 bytes, L2 hit
#      rate, tensor-pipe activity, occupancy), as rows beside the model's
#   7. as much of the full sweep as is left, resumable from the last file
#   8. nvidia-smi -q again, and a summary
#
# Run from the project root:  benchmarks/gpu_campaign.sh [--dry-run]
# --dry-run prints the plan and the seconds each step may take, and runs nothing.
#
# The machine has no network: benchmarks/gpu_prepare.sh puts the PyCUDA and SimPy wheels,
# PyCUDA's source and tvwsim's pure-Python dependencies in ./.whl (carried), installed
# here into /tmp/site; benchmarks/namespace_tree.sh makes the checkout importable as
# tvwsim.* without pip. Results go to $OUT (default ./campaign-out), at most 8 files,
# each written as its step goes:
#
#   device.txt                      nvidia-smi -q before and after, and the clocks query
#   campaign.log                    every step's output (build, check, sweeps, counters)
#   manifest.json                   the nvcc build's resource manifest
#   <device>-<date>.jsonl           the measurements (quick, targets, then full)
#   <device>-<date>.jsonl.failed.jsonl   points that raised (skipped on resume)
#   counters.csv                    ncu --csv --page raw, one row per profiled kernel
#   counters.jsonl                  that CSV joined with the markers in campaign.log
#                                   (python -m tvwsim.validate.counters read)
#
# Environment:
#   BUDGET_S     wall seconds for the whole script (default 500, under a 600 s call);
#                every step is bounded by what is left, and the sweeps stop starting new
#                points in time to write their last row and exit cleanly
#   RESUME_FROM  an earlier measurement file (e.g. traces/measured/h200-20261201.jsonl):
#                copied to $OUT first, so the sweeps skip the points it already holds
#   ARCH         nvcc target (default sm_90); sm_90 also builds the sm_90a (wgmma) kernels
#   TAG          suffix of the measurement file's name (<device>-<date>-<TAG>.jsonl), for a
#                second campaign on the same day
#   SWEEPS       the sweeps before the counters (default "quick hopper targets grouped
#                variants"); the full sweep always comes last, with what is left
#
# Every step is tolerant: a failed step is logged and the script goes on to the next one
# that can still run, and always ends with nvidia-smi -q and a summary.

set -u
cd "$(dirname "$0")/.."

BUDGET_S=${BUDGET_S:-500}
ARCH=${ARCH:-sm_90}
# The warpgroup-MMA kernels exist for sm_90a only; an sm_90 campaign builds them too.
[ "$ARCH" = sm_90 ] && BUILD_ARCHS=sm_90,sm_90a || BUILD_ARCHS=$ARCH
DRY_RUN=0
[ "${1:-}" = "--dry-run" ] && DRY_RUN=1

# Each step's ceiling in seconds (each can be set in the environment; TARGETS_S is that of
# every named sweep but quick); a step also never takes time the later ones are promised,
# so a slow step cannot starve the steps after it entirely.
PYCUDA_BUILD_S=${PYCUDA_BUILD_S:-300} # only when the carried wheel does not import
BUILD_S=${BUILD_S:-150}
CHECK_S=${CHECK_S:-90}
QUICK_S=${QUICK_S:-240}
TARGETS_S=${TARGETS_S:-90}
COUNTERS_S=${COUNTERS_S:-120}
TAIL_S=${TAIL_S:-30} # nvidia-smi and the summary

START=$SECONDS
left() { echo $((BUDGET_S - (SECONDS - START))); }
note() { echo "[campaign +$((SECONDS - START))s] $*"; }
# cap CEILING RESERVE: at most CEILING seconds, leaving RESERVE for later steps.
cap() {
    local room=$(($(left) - $2))
    echo $((room < $1 ? room : $1))
}

if [ "$DRY_RUN" = 1 ]; then
    echo "campaign plan (BUDGET_S=$BUDGET_S, ARCH=$ARCH); each step's ceiling in seconds:"
    echo "  0. nvidia-smi -q                                   ~2"
    echo "  1. wheels from .whl; PyCUDA built on the machine   $PYCUDA_BUILD_S (only if its wheel fails)"
    printf '  2. %-47s %s\n' "tvwsim kernels build --arch $BUILD_ARCHS" "$BUILD_S"
    echo "  3. tvwsim kernels check (probes first)             $CHECK_S"
    for name in ${SWEEPS:-quick hopper targets grouped variants}; do
        [ "$name" = quick ] && limit=$QUICK_S || limit=$TARGETS_S
        printf '  4. tvwsim validate --sweep %-22s %s\n' "$name" "$limit"
    done
    echo "  6. ncu counters (--sweep counters)                 $COUNTERS_S"
    echo "  7. tvwsim validate --sweep full                    what is left - $TAIL_S"
    echo "  8. nvidia-smi -q, summary                          $TAIL_S"
    echo "each step also stops in time for the later steps' minimum; files go to \$OUT"
    exit 0
fi

OUT=${OUT:-$PWD/campaign-out}
mkdir -p "$OUT"
LOG="$OUT/campaign.log"
# run_for SECONDS CMD...: run CMD under a timeout (SIGTERM, then SIGKILL 15 s later),
# appending its output to campaign.log and echoing the verdict; never fails the script.
run_for() {
    local limit=$1
    shift
    if [ "$limit" -lt 5 ]; then
        note "no time left for: $*" | tee -a "$LOG"
        return 124
    fi
    note "running ($limit s max): $*" | tee -a "$LOG"
    timeout -s TERM -k 15 "$limit" "$@" >>"$LOG" 2>&1
    local rc=$?
    note "exit $rc: ${*:1:6}" | tee -a "$LOG"
    return $rc
}

# -- 0. the device, before anything runs ------------------------------------------------
{
    echo "== nvidia-smi -q, before ($(date -u +%FT%TZ))"
    nvidia-smi -q
    echo "== clocks, before"
    nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,clocks.max.sm,power.draw,temperature.gpu \
        --format=csv
} >"$OUT/device.txt" 2>&1 || note "nvidia-smi failed"
NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
SLUG=$(echo "$NAME" | tr 'A-Z' 'a-z' | grep -oE 'h100|h200|a100|v100|l40s?|rtx ?[0-9]{4}' | head -1 | tr -d ' ')
MEAS="$OUT/${SLUG:-gpu}-$(date -u +%Y%m%d)${TAG:+-$TAG}.jsonl"
note "device: ${NAME:-unknown}; measurements -> $MEAS" | tee -a "$LOG"

# -- 1. Python environment --------------------------------------------------------------
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
        >>"$LOG" 2>&1 || note "wheel install failed" | tee -a "$LOG"
else
    note "no .whl/ directory: assuming pycuda and simpy are importable" | tee -a "$LOG"
fi
# The checkout as the installed namespace (tvwsim.sim is ./sim, ...), without pip.
benchmarks/namespace_tree.sh /tmp/tvwsim-src || note "namespace tree failed"
export PYTHONPATH=/tmp/site:/tmp/tvwsim-src${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
# `python3 -m` would put the working directory first on sys.path, where ./tvwsim (the
# contract package alone, without sim/kernels/...) shadows the namespace tree.
export PYTHONSAFEPATH=1
TVWSIM=(python3 -m tvwsim)
PYCUDA_OK='import pycuda.driver as d; d.init(); print("pycuda", d.get_version(), d.Device(0).name())'
if ! python3 -c "$PYCUDA_OK" >>"$LOG" 2>&1; then
    note "the carried PyCUDA wheel does not work here: building it from .whl/pycuda-*.tar.gz" | tee -a "$LOG"
    if [ -f .whl/build-pycuda-on-device.sh ]; then
        run_for "$(cap $PYCUDA_BUILD_S 120)" bash .whl/build-pycuda-on-device.sh
    else
        note "no .whl/build-pycuda-on-device.sh: run benchmarks/gpu_prepare.sh" | tee -a "$LOG"
    fi
fi
python3 -c "import numpy, numba, scipy, simpy, pydantic, pycuda, tvwsim.validate.runner; print('imports ok')" \
    >>"$LOG" 2>&1 || note "an import failed: later steps may fail" | tee -a "$LOG"

if [ -n "${RESUME_FROM:-}" ] && [ -f "$RESUME_FROM" ] && [ ! -e "$MEAS" ]; then
    cp "$RESUME_FROM" "$MEAS" && note "resuming from $RESUME_FROM ($(wc -l <"$MEAS") rows)" | tee -a "$LOG"
    if [ -f "$RESUME_FROM.failed.jsonl" ]; then
        cp "$RESUME_FROM.failed.jsonl" "$MEAS.failed.jsonl"
    fi
fi

# -- 2. build the kernels for this GPU ---------------------------------------------------
run_for "$(cap $BUILD_S 120)" "${TVWSIM[@]}" kernels build --arch "$BUILD_ARCHS" --build-dir build/kernels
cp build/kernels/manifest.json "$OUT/manifest.json" 2>/dev/null || note "no manifest.json" | tee -a "$LOG"

# -- 3. probes, then every kernel against its CPU twin -------------------------------------
# On sm_90 this includes the wgmma / wgmma.sp probes (one run settles the descriptors,
# swizzle, accumulator ownership and wgmma.sp metadata) and the sm_90a kernels.
run_for "$(cap $CHECK_S 120)" "${TVWSIM[@]}" kernels check --build-dir build/kernels

# -- 4, 5. the sweeps before the counters (quick, targets by default) ----------------------
# --budget-s stops a sweep from starting a point it cannot finish; the timeout is the
# backstop. Both sweeps append to the same measurement file (rows carry their keys).
sweep() { # sweep NAME CEILING RESERVE
    local limit
    limit=$(cap "$2" "$3")
    run_for "$limit" "${TVWSIM[@]}" validate --sweep "$1" --out "$MEAS" \
        --build-dir build/kernels --no-progress --budget-s $((limit > 40 ? limit - 25 : 5))
}
# Each named sweep gets its ceiling (quick: QUICK_S, others: TARGETS_S) and leaves the
# counters and the tail their time.
for name in ${SWEEPS:-quick hopper targets grouped variants}; do
    if [ "$name" = quick ]; then
        sweep quick $QUICK_S $((TARGETS_S + COUNTERS_S + TAIL_S))
    else
        sweep "$name" $TARGETS_S $((COUNTERS_S + TAIL_S))
    fi
done

# -- 6. hardware counters under ncu ----------------------------------------------------------
counters() {
    local metrics limit
    if ! command -v ncu >/dev/null; then
        note "no ncu on the PATH: no counters" | tee -a "$LOG"
        return
    fi
    metrics=$(timeout 60 ncu --query-metrics 2>>"$LOG" | python3 -m tvwsim.validate.counters metrics)
    if [ -z "$metrics" ]; then
        note "ncu lists none of our metrics (no counter access here?): no counters" | tee -a "$LOG"
        return
    fi
    note "ncu metrics: $metrics" | tee -a "$LOG"
    limit=$(cap $COUNTERS_S $TAIL_S)
    # --clock-control none: never touch the clocks; the profiled program launches each
    # point twice and profiles the second launch only (--profile-from-start off).
    run_for "$((limit - 20))" ncu --profile-from-start off --clock-control none \
        --metrics "$metrics" --export /tmp/counters --force-overwrite \
        python3 -m tvwsim.validate.counters profile --sweep counters --build-dir build/kernels
    # run_for appended the console (markers and ncu's ==PROF== lines, in order) to
    # campaign.log; the join reads them from there.
    if [ -f /tmp/counters.ncu-rep ]; then
        timeout 60 ncu --import /tmp/counters.ncu-rep --csv --page raw --print-units base \
            >"$OUT/counters.csv" 2>>"$LOG" || note "ncu --import failed" | tee -a "$LOG"
        python3 -m tvwsim.validate.counters read "$OUT/counters.csv" "$LOG" \
            --out "$OUT/counters.jsonl" >>"$LOG" 2>&1 || note "reading the counters failed" | tee -a "$LOG"
    fi
}
counters

# -- 7. as much of the full sweep as fits --------------------------------------------------
sweep full 100000 $TAIL_S

# -- 8. the device after, and what came back ----------------------------------------------
{
    echo "== nvidia-smi -q, after ($(date -u +%FT%TZ))"
    nvidia-smi -q
    echo "== clocks, after"
    nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,clocks.max.sm,power.draw,temperature.gpu \
        --format=csv
} >>"$OUT/device.txt" 2>&1 || note "nvidia-smi failed"
if [ -f "$MEAS" ]; then
    python3 - "$MEAS" <<'EOF' 2>&1 | tee -a "$LOG" || note "summary failed"
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
note "done; files in $OUT:" | tee -a "$LOG"
ls -l "$OUT" | tee -a "$LOG"
