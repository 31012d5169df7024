#!/usr/bin/env bash
# compare.sh: LoadProcessManager against raw C baselines and peers, measured in the same run,
# printed as a table (figure, baseline, ratio, target).
#
#   ./compare.sh                 full run (about 12 minutes on a 2-vCPU VM); medians of 3 runs
#   ./compare.sh --smoke         every job tiny (seconds), no timing assertions: for CI
#   ./compare.sh --reps 5        more repetitions per figure
#   ./compare.sh --no-build      reuse the binaries from the last build
#   ./compare.sh --suite         also build the package-benchmark suite and list its benchmarks
#                                (first build about 4 minutes here), so that it cannot rot either
#   ./compare.sh --results FILE  also keep the raw figures (label name value unit, one a line)
#
# Needs: gcc, swift; optional: taskset, perf (or strace), valgrind, python3, node (rows are
# skipped with a note when a tool is missing). The C baselines are Baselines/baselines.c, the
# peers Peers/*. Our jobs run through .build/release/lpm-compare (Sources/lpm-compare), which
# spawns bench-worker, the no-op worker, as built with the Swift runtime linked statically
# (`--static-swift-stdlib`, in .build-static: it starts in about half the time); the copy of
# .build/release, linked against the shared runtime, serves the start-up rows' comparison.
# Round trips run twice: the whole process tree pinned to one CPU (taskset -c 0), and unpinned.
# Instructions per request come from callgrind.sh (valgrind), run once at the end.
set -euo pipefail
cd "$(dirname "$0")"
HERE=$PWD

SMOKE=0
SUITE=0
REPS=3
BUILD=1
KEEP=""
while [ $# -gt 0 ]; do
    case "$1" in
        --smoke) SMOKE=1 ;;
        --reps) REPS="$2"; shift ;;
        --no-build) BUILD=0 ;;
        --suite) SUITE=1 ;;
        --results) KEEP="$2"; shift ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "compare.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

OUT=$HERE/.build/compare
mkdir -p "$OUT"
RESULTS=$OUT/results.txt
LOG=$OUT/log.txt
: > "$RESULTS"
: > "$LOG"
NOTES=()
note() { NOTES+=("$*"); }
have() { command -v "$1" >/dev/null 2>&1; }

if [ "$SMOKE" = 1 ]; then
    REPS=1
    RT_N=300; C_RT_N=2000; BURST_N=3000; ECHO_N=20000; C_ECHO_N=20000; SPAWN_N=3; CRASH_N=2
    QUEUED_N=3000; MANY_N=8; RECYCLE_N=1000; TIMER_N=10000; HOP_N=1000; XBURST_N=20000
    STRACE_N1=500; STRACE_N2=1500; PEER_ARGS=(--quick --rt 50 --burst 500); NODE_ARGS=(--quick --rt 50 --burst 500)
    ALLOC_N=300
    TIMEOUT=120
else
    RT_N=50000; C_RT_N=100000; BURST_N=1000000; ECHO_N=10000000; C_ECHO_N=10000000; SPAWN_N=30; CRASH_N=30
    QUEUED_N=1000000; MANY_N=256; RECYCLE_N=200000; TIMER_N=1000000; HOP_N=50000; XBURST_N=1000000
    STRACE_N1=20000; STRACE_N2=60000; PEER_ARGS=(); NODE_ARGS=()
    ALLOC_N=20000
    TIMEOUT=900
fi

# ---------------------------------------------------------------- build
BASELINES=$OUT/baselines
PINGPONG_SYSCALLS=$OUT/pingpong_syscalls
if [ "$BUILD" = 1 ]; then
    if [ -f Baselines/baselines.c ]; then
        echo "building the C baselines (gcc -O2)" >&2
        gcc -O2 -Wall -Wextra -o "$BASELINES" Baselines/baselines.c
        # The ping-pong with a reactor's system calls (epoll; io_uring): needs liburing.
        gcc -O2 -Wall -Wextra -o "$PINGPONG_SYSCALLS" Baselines/pingpong_syscalls.c -luring 2>>"$LOG" || rm -f "$PINGPONG_SYSCALLS"
    fi
    echo "building lpm-compare and bench-worker (swift build -c release)" >&2
    swift build -c release --product lpm-compare >>"$LOG" 2>&1 || { tail -30 "$LOG" >&2; exit 1; }
    # SwiftPM links the runtime statically only for a whole build (the flag also changes how
    # every module is compiled), hence a build folder of its own (BENCHMARKS.md, "Worker start").
    # Not in --smoke (CI): a second release build of the whole graph, about 3.5 minutes on 2 cores.
    if [ "$SMOKE" = 0 ]; then
        echo "building bench-worker with the Swift runtime linked statically (.build-static)" >&2
        swift build -c release --static-swift-stdlib --product bench-worker --scratch-path .build-static >>"$LOG" 2>&1 \
            || { tail -30 "$LOG" >&2; exit 1; }
    fi
fi
if [ "$SUITE" = 1 ]; then
    echo "building the package-benchmark suite (swift package benchmark list)" >&2
    BENCHMARK_DISABLE_JEMALLOC=true swift package benchmark list >>"$LOG" 2>&1 || { tail -30 "$LOG" >&2; exit 1; }
    grep -c '^Supervisor\.\|^Reactor\.' "$LOG" >/dev/null || { echo "compare.sh: the suite lists no benchmark" >&2; exit 1; }
fi
BIN=$(swift build -c release --show-bin-path)
LPM=$BIN/lpm-compare
SHARED_WORKER=$BIN/bench-worker
WORKER=$SHARED_WORKER
[ -x "$LPM" ] && [ -x "$WORKER" ] || { echo "compare.sh: $LPM or $WORKER missing (run without --no-build)" >&2; exit 1; }
if [ "$SMOKE" = 0 ] && [ -x "$HERE/.build-static/release/bench-worker" ]; then
    WORKER=$HERE/.build-static/release/bench-worker
else
    SHARED_WORKER=""
    note "no bench-worker in .build-static (run without --no-build): every job spawns the shared-runtime one, no start-up comparison"
fi
HAVE_C=0; [ -x "$BASELINES" ] && HAVE_C=1
[ "$HAVE_C" = 1 ] || note "C baselines missing (Baselines/baselines.c): ratio columns are empty"
PIN=(taskset -c 0)
HAVE_PIN=1; have taskset || { HAVE_PIN=0; PIN=(); note "taskset missing: 'pinned' rows run unpinned"; }

# ---------------------------------------------------------------- running and recording
# run LABEL CMD...: runs CMD, records every `name=N value=V unit=U` line it prints as
# "LABEL N V U". lpm-compare's names end with the backend (_uring/_epoll): that suffix is dropped
# here (the label says which backend was asked for).
run() {
    local label=$1; shift
    local out rc=0
    out=$(timeout "$TIMEOUT" "$@" 2>>"$LOG") || rc=$?
    if [ $rc -ne 0 ]; then
        echo "  FAILED ($rc): $*" >&2
        echo "FAILED ($rc): $*" >>"$LOG"
        FAILURES=$((FAILURES + 1))
    fi
    printf '%s\n' "$out" | awk -v label="$label" '
        /^name=/ {
            n = ""; v = ""; u = ""
            for (i = 1; i <= NF; i++) {
                split($i, kv, "=")
                if (kv[1] == "name") n = kv[2]; else if (kv[1] == "value") v = kv[2]; else if (kv[1] == "unit") u = substr($i, 6)
            }
            sub(/_(uring|epoll)$/, "", n)
            print label, n, v, u
        }' >>"$RESULTS"
}
FAILURES=0

# val LABEL NAME: the median of the recorded values (empty if none).
val() {
    awk -v l="$1" -v n="$2" '$1 == l && $2 == n { v[++k] = $3 }
        END {
            if (k == 0) exit
            for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
            if (k % 2) print v[(k + 1) / 2]; else print (v[k / 2] + v[k / 2 + 1]) / 2
        }' "$RESULTS"
}

step() { echo "[$(date +%H:%M:%S)] $*" >&2; }

BACKENDS=(uring epoll)
INFO=$("$LPM" info 2>/dev/null || true)
DEFAULT_BACKEND=$(printf '%s' "$INFO" | sed -n 's/.*reactor_automatic=\([a-z]*\).*/\1/p')
SUP_BACKEND=$(printf '%s' "$INFO" | sed -n 's/.*supervisor_default=\([a-z]*\).*/\1/p')
if [ "$DEFAULT_BACKEND" != uring ]; then
    BACKENDS=(epoll)
    note "io_uring is refused here (the reactor falls back to epoll): epoll rows only"
fi
export LPM_BENCH_WORKER=$WORKER

# ---------------------------------------------------------------- the jobs
for rep in $(seq 1 "$REPS"); do
    step "repetition $rep of $REPS"
    # Round trips, same placement for baseline and ours: pinned to CPU 0, then unpinned.
    for place in pinned unpinned; do
        P=(); [ $place = pinned ] && P=("${PIN[@]}")
        step "  round trips, $place"
        [ "$HAVE_C" = 1 ] && run "c.$place" "${P[@]}" "$BASELINES" pingpong "$C_RT_N"
        if [ -x "$PINGPONG_SYSCALLS" ]; then
            run "c.$place" "${P[@]}" "$PINGPONG_SYSCALLS" epoll "$C_RT_N"
            run "c.$place" "${P[@]}" "$PINGPONG_SYSCALLS" uring "$C_RT_N"
        fi
        # The same round trip over shared-memory rings: doorbells in both placements; busy
        # polling unpinned only (two spinning processes on one CPU measure the scheduler).
        [ "$HAVE_C" = 1 ] && run "c.$place" "${P[@]}" "$BASELINES" ring-pingpong "$C_RT_N" bell
        [ "$HAVE_C" = 1 ] && [ $place = unpinned ] && run "c.$place" "$BASELINES" ring-pingpong "$C_RT_N" poll
        for b in "${BACKENDS[@]}"; do
            run "$b.$place" "${P[@]}" "$LPM" reactor-pingpong "$RT_N" --backend "$b"
            for api in rt-async rt-executor rt-actor rt-handler rt-chained; do
                run "$b.$place" "${P[@]}" "$LPM" "$api" "$RT_N" --backend "$b"
            done
            # The shared-memory transport; with busy polling (50 µs, both sides) unpinned only,
            # beside the socket transport with the same polling.
            for api in rt-async rt-executor rt-chained; do
                run "$b.$place" "${P[@]}" "$LPM" "$api-rings" "$RT_N" --backend "$b"
                if [ $place = unpinned ]; then
                    run "$b.poll" env LPM_BUSY_POLL_US=50 "$LPM" "$api" "$RT_N" --backend "$b"
                    run "$b.poll" env LPM_BUSY_POLL_US=50 "$LPM" "$api-rings" "$RT_N" --backend "$b"
                fi
            done
        done
        run "auto.$place" "${P[@]}" "$LPM" reactor-pingpong-thread "$RT_N"
    done

    step "  throughput"
    [ "$HAVE_C" = 1 ] && run c "$BASELINES" echo "$C_ECHO_N"
    [ "$HAVE_C" = 1 ] && run c "$BASELINES" ring-echo "$C_ECHO_N" poll
    [ "$HAVE_C" = 1 ] && run c "$BASELINES" ring-echo "$C_ECHO_N" bell
    for b in "${BACKENDS[@]}"; do
        run "$b" "$LPM" reactor-echo "$ECHO_N" --backend "$b"
        run "$b" "$LPM" burst "$BURST_N" --backend "$b"
        run "$b" "$LPM" burst-async "$BURST_N" --backend "$b"
        run "$b" "$LPM" burst-executor "$BURST_N" --backend "$b"
        run "$b" "$LPM" burst-batched "$BURST_N" --backend "$b"
        run "$b" "$LPM" burst-rings "$BURST_N" --backend "$b"
        run "$b" "$LPM" burst-executor-rings "$BURST_N" --backend "$b"
        run "$b" "$LPM" map "$BURST_N" --chunk 1000 --backend "$b"
    done

    step "  spawn and crash"
    if [ "$HAVE_C" = 1 ]; then
        run c "$BASELINES" spawn "$SPAWN_N" "$WORKER"
        [ -n "$SHARED_WORKER" ] && run c.shared "$BASELINES" spawn "$SPAWN_N" "$SHARED_WORKER"
        run c.self "$BASELINES" spawn "$SPAWN_N" --self-child
    fi
    run auto "$LPM" crash "$CRASH_N"
    [ -n "$SHARED_WORKER" ] && LPM_BENCH_WORKER=$SHARED_WORKER run shared "$LPM" crash "$CRASH_N"

    step "  queue before start, many workers, reactor"
    run auto "$LPM" queued "$QUEUED_N"
    run auto "$LPM" many-workers "$MANY_N"
    step "  worker template: crash, many workers, resize, recycling (exec'd rows in the same run)"
    run auto "$LPM" crash-template "$CRASH_N"
    run auto "$LPM" many-workers-template "$MANY_N"
    run auto "$LPM" resize "$MANY_N"
    run auto "$LPM" resize-template "$MANY_N"
    run auto "$LPM" recycle-burst "$RECYCLE_N"
    run auto "$LPM" recycle-burst-template "$RECYCLE_N"
    run auto "$LPM" timer-churn "$TIMER_N"
    run auto "$LPM" execute-hop "$HOP_N"
    run auto "$LPM" execute-burst "$XBURST_N"
done

# Peers: once (they take their own medians).
if have python3 && [ -f Peers/peers.py ]; then
    step "peers: python"
    run peer python3 Peers/peers.py "${PEER_ARGS[@]}"
else
    note "python3 or Peers/peers.py missing: no Python rows"
fi
if have node && [ -f Peers/node_fork_echo.js ]; then
    step "peers: node"
    run peer node Peers/node_fork_echo.js "${NODE_ARGS[@]}"
else
    note "node or Peers/node_fork_echo.js missing: no Node rows"
fi

# ---------------------------------------------------------------- syscalls and CPU per request
# perf stat (tracepoint counts: cheap, they do not change the batching) where it works, else
# strace -f -c (which slows every syscall, so the supervisor batches more than it would).
# Two runs of different sizes; the difference divided by the difference in requests removes
# set-up and tear-down. `burst N` also sends min(N, 20000) warm-up requests; rt-* send
# min(max(N/10, 1000), 10000).
SYS_ROWS=$OUT/syscalls.txt
: > "$SYS_ROWS"
SYS_TOOL=""
EVENTS="raw_syscalls:sys_enter,context-switches,task-clock"
for sc in sendto recvmsg read write epoll_pwait2 epoll_wait io_uring_enter futex epoll_ctl; do
    EVENTS="$EVENTS,syscalls:sys_enter_$sc"
done
if have perf && perf stat -x, -e "$EVENTS" -o "$OUT/perfcheck.txt" -- true >/dev/null 2>&1 \
        && grep -q '^[0-9]*,,raw_syscalls:sys_enter' "$OUT/perfcheck.txt"; then
    SYS_TOOL=perf
elif have strace; then
    SYS_TOOL=strace
    note "perf cannot count syscall tracepoints here: syscall counts come from strace -f -c, which slows each syscall (the supervisor then batches more than it would)"
else
    note "neither perf nor strace: no syscall counts"
fi
sys_counts() {  # FILE -> "name count" lines (total as "total"; task-clock in ns as "cpu_ns")
    if [ "$SYS_TOOL" = perf ]; then
        awk -F, '/^[0-9.]+,/ { e = $3; v = $1
            if (e == "raw_syscalls:sys_enter") e = "total"
            else if (e == "task-clock") { e = "cpu_ns"; v = v * 1e6 }
            else if (e == "context-switches") e = "csw"
            else sub(/^syscalls:sys_enter_/, "", e)
            print e, v }' "$1"
    else
        awk '/^-+/ { next } /^% time/ { next } NF >= 5 { print $NF, $4 }' "$1"
    fi
}
count_syscalls() {  # FILE CMD...
    local file=$1; shift
    if [ "$SYS_TOOL" = perf ]; then
        timeout "$TIMEOUT" perf stat -x, -e "$EVENTS" -o "$file" -- "$@" >/dev/null 2>>"$LOG"
    else
        timeout "$TIMEOUT" strace -f -c -o "$file" "$@" >/dev/null 2>>"$LOG"
    fi
}
per_request() {  # LABEL REQUESTS1 REQUESTS2 CMD1... -- CMD2...
    local label=$1 r1=$2 r2=$3; shift 3
    local c1=() c2=()
    while [ "$1" != -- ]; do c1+=("$1"); shift; done; shift
    c2=("$@")
    count_syscalls "$OUT/sys1.txt" "${c1[@]}" && count_syscalls "$OUT/sys2.txt" "${c2[@]}" || { FAILURES=$((FAILURES + 1)); return; }
    join -a 2 -e 0 -o 0,1.2,2.2 <(sys_counts "$OUT/sys1.txt" | sort) <(sys_counts "$OUT/sys2.txt" | sort) |
        awk -v l="$label" -v d=$((r2 - r1)) '{ x = ($3 - $2) / d; if (x > 0.005 || $1 == "total") printf "%s %s %.3f\n", l, $1, x }' >>"$SYS_ROWS"
}
if [ -n "$SYS_TOOL" ]; then
    step "syscalls per request ($SYS_TOOL)"
    sw() { local n=$1; echo $(( n < 20000 ? n * 2 : n + 20000 )); }
    rw() { local n=$1 w=$(( $1 / 10 )); [ $w -lt 1000 ] && w=1000; [ $w -gt 10000 ] && w=10000; echo $(( n + w )); }
    per_request lpm_burst "$(sw $STRACE_N1)" "$(sw $STRACE_N2)" "$LPM" burst "$STRACE_N1" -- "$LPM" burst "$STRACE_N2"
    per_request lpm_burst_batched "$(sw $STRACE_N1)" "$(sw $STRACE_N2)" "$LPM" burst-batched "$STRACE_N1" -- "$LPM" burst-batched "$STRACE_N2"
    [ "$HAVE_C" = 1 ] && per_request c_echo "$STRACE_N1" "$STRACE_N2" "$BASELINES" echo "$STRACE_N1" -- "$BASELINES" echo "$STRACE_N2"
    R1=$((STRACE_N1 / 4)); R2=$((STRACE_N2 / 4))
    per_request lpm_rt_async "$(rw $R1)" "$(rw $R2)" "$LPM" rt-async "$R1" -- "$LPM" rt-async "$R2"
    per_request lpm_rt_handler "$(rw $R1)" "$(rw $R2)" "$LPM" rt-handler "$R1" -- "$LPM" rt-handler "$R2"
    per_request lpm_rt_chained "$(rw $R1)" "$(rw $R2)" "$LPM" rt-chained "$R1" -- "$LPM" rt-chained "$R2"
    [ "$HAVE_C" = 1 ] && per_request c_pingpong "$R1" "$R2" "$BASELINES" pingpong "$R1" -- "$BASELINES" pingpong "$R2"
fi

# ---------------------------------------------------------------- allocations per request
# Tools/malloc_count.c, preloaded into the supervisor (lpm-compare) and its worker: counts every
# malloc-family call. The worker reports its count when asked (bench-worker's "?mallocs").
ALLOC_ROWS=$OUT/allocs.txt
: > "$ALLOC_ROWS"
if gcc -O2 -shared -fPIC -o "$OUT/malloc_count.so" Tools/malloc_count.c 2>>"$LOG"; then
    step "allocations per request (malloc_count.so)"
    LD_PRELOAD=$OUT/malloc_count.so timeout "$TIMEOUT" "$LPM" allocs "$ALLOC_N" 2>>"$LOG" \
        | sed -n 's/^name=\([^ ]*\) value=\([^ ]*\) .*/\1 \2/p' >>"$ALLOC_ROWS" || FAILURES=$((FAILURES + 1))
else
    note "could not build Tools/malloc_count.c: no allocation counts"
fi

# ---------------------------------------------------------------- instructions per request
# callgrind.sh: every process of each job under callgrind, two sizes, the difference per request
# (deterministic counts; see the script). Its own timeouts bound each run.
if have valgrind; then
    step "instructions per request (callgrind.sh$([ "$SMOKE" = 1 ] && echo " --smoke"))"
    CG_ARGS=(--no-build); [ "$SMOKE" = 1 ] && CG_ARGS+=(--smoke)
    TIMEOUT=$(( SMOKE == 1 ? 900 : 5400 )) run cg ./callgrind.sh "${CG_ARGS[@]}"
else
    note "valgrind missing: no instruction counts (apt-get install valgrind)"
fi

# ---------------------------------------------------------------- adaptive pool: step load
# lpm-compare adaptive-step*: a step from 5% to 100% of what 4 workers serve, then 5% again, on
# an adaptive pool (minimum 1, maximum 4) and on fixed pools of 1 and of 4, in this run. The
# workers serve one request at a time in 10 ms: the package's lpm-test-worker in `slow` mode (a
# timer, not CPU, so that four busy workers fit on 2 shared vCPUs), built in debug in the
# package root (the Benchmarks package cannot build it). 100% is 4 over the median latency of
# lone requests, measured by each job before its run.
STEP_ROWS=0
PSS_N=$([ "$SMOKE" = 1 ] && echo 2 || echo 16)
STEP_N=$([ "$SMOKE" = 1 ] && echo 1000 || echo 4000)
if [ "$BUILD" = 1 ]; then
    echo "building lpm-test-worker (debug, in the package root) for the step load" >&2
    (cd .. && swift build --product lpm-test-worker >>"$LOG" 2>&1) || note "could not build lpm-test-worker: no step-load rows"
fi
STEP_WORKER="$(cd .. && swift build --show-bin-path 2>/dev/null)/lpm-test-worker"
if [ -x "$STEP_WORKER" ]; then
    export LPM_STEP_WORKER=$STEP_WORKER
    STEP_ROWS=1
    for rep in $(seq 1 "$REPS"); do
        step "adaptive pool under a step load, repetition $rep of $REPS"
        for j in adaptive-step adaptive-step-fixed1 adaptive-step-fixed4; do
            run step "$LPM" "$j" "$STEP_N"
        done
    done
    # The worker template's memory: 16 workers whose preload maps 64 MiB, exec'd vs forked.
    step "worker template: PSS of $PSS_N workers with a 64 MiB preload, exec'd and forked"
    LPM_PSS_WORKER=$STEP_WORKER run auto "$LPM" template-pss "$PSS_N"
else
    note "lpm-test-worker missing (swift build --product lpm-test-worker in the package root): no step-load rows, no template PSS row"
fi

# ---------------------------------------------------------------- the table
fmt_time() {  # value unit -> human
    awk -v v="$1" -v u="$2" 'BEGIN {
        if (v == "") { print "-"; exit }
        ns = v; if (u ~ /^us/) ns = v * 1000; else if (u ~ /^ms/) ns = v * 1e6; else if (u == "s") ns = v * 1e9
        if (ns >= 1e9) printf "%.2f s", ns / 1e9; else if (ns >= 1e6) printf "%.2f ms", ns / 1e6
        else if (ns >= 1e3) printf "%.1f us", ns / 1e3; else printf "%.0f ns", ns }'
}
fmt_rate() {
    awk -v v="$1" -v u="$2" 'BEGIN {
        if (v == "") { print "-"; exit }
        if (v >= 1e6) printf "%.2f M%s", v / 1e6, u; else if (v >= 1e3) printf "%.1f k%s", v / 1e3, u; else printf "%.1f %s", v, u }'
}
ratio() {  # ours base -> ours/base
    awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b == 0) print "-"; else printf "%.2fx", a / b }'
}
verdict() {  # ours base op limit (time: ours/base <= limit; rate: ours/base >= limit)
    [ "$SMOKE" = 1 ] && { echo "(smoke)"; return; }
    awk -v a="$1" -v b="$2" -v op="$3" -v t="$4" 'BEGIN {
        if (a == "" || b == "" || b == 0) { print "-"; exit }
        r = a / b
        if (op == "le") print (r <= t ? "met" : sprintf("MISSED by %.0f%%", (r / t - 1) * 100))
        else print (r >= t ? "met" : sprintf("MISSED (%.0f%% of %.0f%%)", r * 100, t * 100)) }'
}
ROW_FMT="%-60s %14s %-22s %8s %-30s\n"
header() { printf "\n%s\n" "$1"; printf "$ROW_FMT" "figure" "ours" "baseline" "ratio" "target"; printf '%.0s-' {1..138}; echo; }
row() { printf "$ROW_FMT" "$@"; }

# Time row: desc label name unit base_desc base_label base_name base_unit [limit]
trow() {
    local desc=$1 v bv target=""
    v=$(val "$2" "$3"); bv=$(val "$6" "$7")
    # normalise both to ns
    local vn bn
    vn=$(awk -v v="$v" -v u="$4" 'BEGIN { if (v == "") exit; if (u ~ /^us/) v *= 1000; else if (u ~ /^ms/) v *= 1e6; print v }')
    bn=$(awk -v v="$bv" -v u="$8" 'BEGIN { if (v == "") exit; if (u ~ /^us/) v *= 1000; else if (u ~ /^ms/) v *= 1e6; print v }')
    [ -n "${9:-}" ] && target="<= ${9}x: $(verdict "$vn" "$bn" le "$9")"
    row "$desc" "$(fmt_time "$v" "$4")" "$5 $(fmt_time "$bv" "$8")" "$(ratio "$vn" "$bn")" "$target"
}
# Rate row: desc label name unit base_desc base_label base_name [limit]
rrow() {
    local desc=$1 v bv target=""
    v=$(val "$2" "$3"); bv=$(val "$6" "$7")
    [ -n "${8:-}" ] && target=">= $(awk -v t="$8" 'BEGIN { printf "%.0f%%", t * 100 }'): $(verdict "$v" "$bv" ge "$8")"
    row "$desc" "$(fmt_rate "$v" "$4")" "$5 $(fmt_rate "$bv" "$4")" "$(ratio "$v" "$bv")" "$target"
}
# Count row: desc label name unit base_desc base_label base_name (ratio ours/base)
crow() {
    local v bv
    v=$(val "$2" "$3"); bv=$(val "$6" "$7")
    row "$1" "${v:--} $4" "$5 ${bv:--}" "$(ratio "$v" "$bv")" ""
}
# Plain row: desc label name unit kind(time|rate|num)
prow() {
    local v; v=$(val "$2" "$3")
    case "$4" in
        time:*) row "$1" "$(fmt_time "$v" "${4#time:}")" "" "" "" ;;
        rate:*) row "$1" "$(fmt_rate "$v" "${4#rate:}")" "" "" "" ;;
        *) row "$1" "${v:--} $4" "" "" "" ;;
    esac
}

{
echo
echo "LoadProcessManager benchmarks: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, kernel $(uname -r)"
echo "mode: $([ "$SMOKE" = 1 ] && echo "SMOKE (tiny sizes, no timing meaning)" || echo full), medians of $REPS run(s); backends by default here: Reactor() ${DEFAULT_BACKEND:-?}, Supervisor/Worker ${SUP_BACKEND:-?}"
echo "rows marked [auto] use those defaults; [uring]/[epoll] force one backend on both sides (LPM_REACTOR_BACKEND)"
echo "sizes: round trips $RT_N (C $C_RT_N), burst $BURST_N, echo $ECHO_N (C $C_ECHO_N), spawn $SPAWN_N, crash $CRASH_N, queued $QUEUED_N, workers $MANY_N"

for place in pinned unpinned; do
    header "Sequential round trips, 64 B, $place ($([ $place = pinned ] && echo 'whole process tree on CPU 0' || echo 'scheduler decides')); baseline: C ping-pong, blocking read/write, same placement"
    trow "C ping-pong, 2 processes (baseline)" "c.$place" c_pingpong_socketpair_64B ns "" "" "" ""
    trow "C ping-pong, epoll_wait + recv + send each side" "c.$place" c_pingpong_epoll_64B ns "C" "c.$place" c_pingpong_socketpair_64B ns
    trow "C ping-pong, io_uring: send + recv, one io_uring_enter each side" "c.$place" c_pingpong_uring_64B ns "C" "c.$place" c_pingpong_socketpair_64B ns
    trow "C shared-memory rings, eventfd doorbells, 2 processes" "c.$place" c_ring_pingpong_bell_64B ns "C" "c.$place" c_pingpong_socketpair_64B ns
    [ $place = unpinned ] && trow "C shared-memory rings, busy polling, 2 processes" "c.$place" c_ring_pingpong_poll_64B ns "C" "c.$place" c_pingpong_socketpair_64B ns
    for b in "${BACKENDS[@]}"; do
        trow "reactor ping-pong, 2 processes [$b]" "$b.$place" reactor_pingpong_processes_64B ns "C" "c.$place" c_pingpong_socketpair_64B ns
        trow "Supervisor+Worker, async API, default pool [$b]" "$b.$place" lpm_rt_async_64B ns "C" "c.$place" c_pingpong_socketpair_64B ns 2.0
        trow "Supervisor+Worker, async API on the supervisor's executor [$b]" "$b.$place" lpm_rt_executor_64B ns "C" "c.$place" c_pingpong_socketpair_64B ns 1.3
        trow "Supervisor+Worker, async API from an actor on the reactor's executor [$b]" "$b.$place" lpm_rt_actor_64B ns "C" "c.$place" c_pingpong_socketpair_64B ns
        trow "Supervisor+Worker, completion handler [$b]" "$b.$place" lpm_rt_handler_64B ns "C" "c.$place" c_pingpong_socketpair_64B ns 1.2
        trow "Supervisor+Worker, chained on reactor thread [$b]" "$b.$place" lpm_rt_chained_64B ns "C" "c.$place" c_pingpong_socketpair_64B ns 1.2
        trow "  shared-memory rings, async API, against sockets [$b]" "$b.$place" lpm_rt_async_rings_64B ns "sockets" "$b.$place" lpm_rt_async_64B ns 1.0
        trow "  shared-memory rings, async API on the executor, against sockets [$b]" "$b.$place" lpm_rt_executor_rings_64B ns "sockets" "$b.$place" lpm_rt_executor_64B ns 1.0
        trow "  shared-memory rings, chained, against sockets [$b]" "$b.$place" lpm_rt_chained_rings_64B ns "sockets" "$b.$place" lpm_rt_chained_64B ns 1.0
        if [ $place = unpinned ]; then
            trow "  busy polling 50 µs, sockets, chained [$b]" "$b.poll" lpm_rt_chained_64B ns "C rings" "c.$place" c_ring_pingpong_poll_64B ns
            trow "  busy polling 50 µs, rings, chained (target <= 3 µs) [$b]" "$b.poll" lpm_rt_chained_rings_64B ns "sockets" "$b.poll" lpm_rt_chained_64B ns
            trow "  busy polling 50 µs, rings, async API on the executor (target <= 5 µs) [$b]" "$b.poll" lpm_rt_executor_rings_64B ns "sockets" "$b.poll" lpm_rt_executor_64B ns
            trow "  busy polling 50 µs, rings, async API [$b]" "$b.poll" lpm_rt_async_rings_64B ns "sockets" "$b.poll" lpm_rt_async_64B ns
        fi
    done
    trow "reactor ping-pong, 2 threads [auto]" "auto.$place" reactor_pingpong_threads_64B ns "C" "c.$place" c_pingpong_socketpair_64B ns
done

header "Throughput, 2 workers; baseline: C pipelined echo, 2 children x 256 in flight, batched reads/writes"
rrow "C batched echo (baseline)" c c_echo_epoll_batched_2x256x64B "msg/s" "" "" ""
rrow "C shared-memory rings, 1 worker, busy polling" c c_ring_echo_poll_1x64B "msg/s" "C" c c_echo_epoll_batched_2x256x64B
rrow "C shared-memory rings, 1 worker, eventfd doorbells" c c_ring_echo_bell_1x64B "msg/s" "C" c c_echo_epoll_batched_2x256x64B
for b in "${BACKENDS[@]}"; do
    rrow "reactor pipelined echo, same shape [$b]" "$b" reactor_echo_batched_2x256x64B "msg/s" "C" c c_echo_epoll_batched_2x256x64B
    rrow "Supervisor burst of $BURST_N, handler API [$b]" "$b" lpm_burst_2w "req/s" "C" c c_echo_epoll_batched_2x256x64B 0.40
    rrow "Supervisor burst of $BURST_N, async API, 512 tasks [$b]" "$b" lpm_burst_async_2w "req/s" "C" c c_echo_epoll_batched_2x256x64B 0.40
    rrow "  async API, 512 tasks, against the handler burst [$b]" "$b" lpm_burst_async_2w "req/s" "handler" "$b" lpm_burst_2w 0.80
    rrow "  async API, 512 tasks on the supervisor's executor, against the handler burst [$b]" "$b" lpm_burst_executor_2w "req/s" "handler" "$b" lpm_burst_2w 0.80
    rrow "Supervisor burst of $BURST_N, enqueue(contentsOf:) [$b]" "$b" lpm_burst_batched_2w "req/s" "C" c c_echo_epoll_batched_2x256x64B 0.40
    rrow "  shared-memory rings, handler API, against sockets (target >= 1.5x) [$b]" "$b" lpm_burst_2w_rings "req/s" "sockets" "$b" lpm_burst_2w 1.5
    rrow "  shared-memory rings, async API on the executor, against sockets [$b]" "$b" lpm_burst_executor_2w_rings "req/s" "sockets" "$b" lpm_burst_executor_2w
done
for b in "${BACKENDS[@]}"; do
    prow "  supervisor CPU per request, burst [$b]" "$b" lpm_burst_2w_supervisor_cpu "time:ns"
    prow "  workers' CPU per request, burst [$b]" "$b" lpm_burst_2w_workers_cpu "time:ns"
done
for b in "${BACKENDS[@]}"; do
    rrow "Supervisor.map of $BURST_N 8-byte inputs, chunks of 1000, against Python Pool.map(chunksize=1000) [$b]" "$b" lpm_map_chunk1000_2w "req/s" "Python" peer py_multiprocessing_Pool_burst_chunksize1000 2.0
done
for p in py_multiprocessing_Pool_burst_chunksize1 py_multiprocessing_Pool_burst_chunksize1000 \
         py_ProcessPoolExecutor_burst_chunksize1 py_ProcessPoolExecutor_burst_chunksize1000 node_fork_ipc_burst; do
    rrow "peer: $p" peer "$p" "req/s" "C" c c_echo_epoll_batched_2x256x64B
done

header "Worker start and crash to replacement, 1 worker; baseline: C posix_spawn of bench-worker until its first frame"
trow "C spawn bench-worker (static runtime) to first byte (baseline)" c c_spawn_to_first_byte us "" "" "" ""
trow "C spawn bench-worker (shared runtime) to first byte" c.shared c_spawn_to_first_byte us "static" c c_spawn_to_first_byte us
trow "C spawn of a C child to first byte (floor)" c.self c_spawn_to_first_byte us "static" c c_spawn_to_first_byte us
trow "SIGKILL -> .workerRestarted (replacement spawned)" auto lpm_crash_to_restarted us "C" c c_spawn_to_first_byte us
trow "SIGKILL -> .online (replacement ready)" auto lpm_crash_to_online us "C" c c_spawn_to_first_byte us 1.5
trow "SIGKILL -> replacement's first answer" auto lpm_crash_to_first_answer us "C" c c_spawn_to_first_byte us 1.5
trow "SIGKILL -> .online, shared-runtime worker" shared lpm_crash_to_online us "C shared" c.shared c_spawn_to_first_byte us 1.5
trow "SIGKILL -> first answer, shared-runtime worker" shared lpm_crash_to_first_answer us "C shared" c.shared c_spawn_to_first_byte us 1.5

header "Sequential round trips against the peers (unpinned; peers report medians, we report means)"
for b in "$SUP_BACKEND"; do
    for p in py_ProcessPoolExecutor_rt_median py_multiprocessing_Pool_rt_median node_fork_ipc_rt_median; do
        trow "Supervisor async [$b] vs $p" "$b.unpinned" lpm_rt_async_64B ns "peer" peer "$p" us
    done
done

header "Queue, pool size, reactor (no baseline)"
prow "1M queued before start: enqueue cost" auto lpm_queued_enqueue "time:ns"
prow "1M queued before start: supervisor RSS growth per request (B)" auto lpm_queued_rss "B/req"
prow "1M queued before start: start -> all answered" auto lpm_queued_drain "time:s"
prow "1M queued before start: drain rate" auto lpm_queued_drain_rate "rate:req/s"
prow "$MANY_N workers: start -> .online" auto "lpm_${MANY_N}_workers_online" "time:ms"
prow "$MANY_N workers: one request each, all answered" auto "lpm_${MANY_N}_workers_one_request_each" "time:ms"
prow "$MANY_N workers: distinct workers answering" auto "lpm_${MANY_N}_workers_distinct_answering" "workers"
prow "$MANY_N workers: soft kill until all reaped" auto "lpm_${MANY_N}_workers_softkill" "time:ms"
prow "reactor timer schedule+cancel (1000 pending)" auto reactor_timer_schedule_cancel "time:ns"
prow "reactor Handle.execute there and back" auto reactor_execute_hop_rt "time:ns"
prow "reactor Handle.execute burst" auto reactor_execute_burst "rate:jobs/s"

header "Worker template (forked workers) against exec'd workers, same run"
trow "template: SIGKILL -> .online (replacement forked)" auto lpm_template_crash_to_online us "exec" auto lpm_crash_to_online us
trow "template: SIGKILL -> .online, vs C spawn of a C child" auto lpm_template_crash_to_online us "C child" c.self c_spawn_to_first_byte us 1.0
trow "template: SIGKILL -> first answer" auto lpm_template_crash_to_first_answer us "exec" auto lpm_crash_to_first_answer us
trow "template: $MANY_N workers start -> .online" auto "lpm_template_${MANY_N}_workers_online" ms "exec" auto "lpm_${MANY_N}_workers_online" ms
trow "template: resize(1 -> $MANY_N) -> all ready" auto "lpm_template_resize_1_to_${MANY_N}_online" ms "exec" auto "lpm_resize_1_to_${MANY_N}_online" ms
rrow "template: burst, recycled every 100 requests" auto lpm_template_recycle_every_100_burst "req/s" "exec" auto lpm_recycle_every_100_burst
crow "template: PSS per worker, 64 MiB preload (MiB)" auto lpm_pss_per_worker_forked_64mib_preload "" "exec" auto lpm_pss_per_worker_exec_64mib_preload
# (CPU time per round trip is not shown: on this VM the kernel's accounting of many short runs
# per second exceeds the wall time, so it cannot be read as cost.)
for b in "${BACKENDS[@]}"; do
    prow "supervisor context switches per round trip, async, unpinned [$b]" "$b.unpinned" lpm_rt_async_supervisor_csw "switches"
    prow "supervisor context switches per round trip, chained, unpinned [$b]" "$b.unpinned" lpm_rt_chained_supervisor_csw "switches"
done

if [ "$STEP_ROWS" = 1 ]; then
    header "Adaptive pool 1...4 under a step load 5% -> 100% of 4 workers (10 ms service, one request at a time), against fixed pools of 1 and 4"
    prow "100% load (4 workers over the measured lone-request latency)" step lpm_step_adaptive_full_rate "rate:req/s"
    for k in adaptive fixed1 fixed4; do
        prow "queue wait during the step, p99, $k" step "lpm_step_${k}_wait_p99" "time:ms"
    done
    for k in adaptive fixed1 fixed4; do
        prow "queue wait during the step, p50, $k" step "lpm_step_${k}_wait_p50" "time:ms"
    done
    prow "queue wait at 5% before the step, p99, adaptive (1 worker)" step lpm_step_adaptive_low_wait_p99 "time:ms"
    prow "adaptive: step start -> first growth" step lpm_step_adaptive_first_growth "time:ms"
    prow "adaptive: step start -> 4 workers ready" step lpm_step_adaptive_time_to_max "time:ms"
    prow "adaptive: load back to 5% -> back to 1 worker (idle timeout $(val step lpm_step_adaptive_idle_timeout) ms)" step lpm_step_adaptive_return_to_min "time:ms"
    a=$(val step lpm_step_adaptive_rss_mean); f4=$(val step lpm_step_fixed4_rss_mean)
    row "sum of worker RSS over the run, mean: adaptive vs fixed 4" "${a:--} MiB" "fixed 4: ${f4:--} MiB" "$(ratio "$a" "$f4")" ""
    a=$(val step lpm_step_adaptive_rss_peak); f4=$(val step lpm_step_fixed4_rss_peak)
    row "sum of worker RSS over the run, peak: adaptive vs fixed 4" "${a:--} MiB" "fixed 4: ${f4:--} MiB" "$(ratio "$a" "$f4")" ""
    a=$(val step lpm_step_adaptive_workers_mean); f4=$(val step lpm_step_fixed4_workers_mean)
    row "workers in the pool over the run, mean: adaptive vs fixed 4" "${a:--}" "fixed 4: ${f4:--}" "$(ratio "$a" "$f4")" ""
    for k in adaptive fixed1 fixed4; do
        prow "failed requests, $k" step "lpm_step_${k}_failures" "requests"
    done
fi

if [ -s "$SYS_ROWS" ]; then
    printf "\nPer request, whole process tree (%s; supervisor default backend %s): syscalls, context switches, CPU\n" "$SYS_TOOL" "$SUP_BACKEND"
    for l in lpm_burst lpm_burst_batched c_echo lpm_rt_async lpm_rt_handler lpm_rt_chained c_pingpong; do
        awk -v l="$l" '$1 == l && $2 == "total" { t = $3 } $1 == l && $2 == "csw" { c = $3 } $1 == l && $2 == "cpu_ns" { u = $3 }
            $1 == l && $2 != "total" && $2 != "csw" && $2 != "cpu_ns" { s = s sprintf(" %s %s", $2, $3) }
            END {
                if (t == "") exit
                # CPU (task-clock) only for the throughput jobs: for round trips the figure
                # includes the idle wake-up path of this VM and exceeds the wall time.
                cpu = (l ~ /burst|echo/ && u != "") ? sprintf(", CPU %.0f ns", u) : ""
                printf "  %-18s syscalls %7s (%s ), switches %s%s\n", l, t, s, (c == "" ? "-" : c), cpu }' "$SYS_ROWS"
    done
fi
if [ -s "$ALLOC_ROWS" ]; then
    printf "\nHeap allocations per request (malloc-family calls; 64-byte payload; target: none beyond the payload)\n"
    awk '{ printf "  %-36s %s\n", $1, $2 }' "$ALLOC_ROWS"
fi

if [ -n "$(val cg cg_c_echo_supervisor)$(val cg cg_lpm_burst_supervisor)" ]; then
    header "Instructions per request, user space (callgrind.sh: (Ir(N2) - Ir(N1)) / requests between); baseline: the C programs"
    for side in supervisor workers; do
        who=$([ $side = supervisor ] && echo "parent" || echo "children")
        crow "burst, $side" cg "cg_lpm_burst_$side" "Ir/req" "C echo, $who" cg "cg_c_echo_$side"
        crow "round trip, chained, $side" cg "cg_lpm_rt_chained_$side" "Ir/req" "C ping-pong, $who" cg "cg_c_pingpong_$side"
        crow "round trip, async, $side" cg "cg_lpm_rt_async_$side" "Ir/req" "C ping-pong, $who" cg "cg_c_pingpong_$side"
    done
    # The hot-path target (0.3 us of reactor-thread CPU a request) is about 1200 Ir at this machine's rate.
    crow "burst, supervisor's reactor thread (target ~1200 Ir)" cg cg_lpm_burst_reactor "Ir/req" "C echo, parent" cg cg_c_echo_supervisor
    crow "burst, supervisor's caller thread (the inbox)" cg cg_lpm_burst_caller "Ir/req" "C echo, parent" cg cg_c_echo_supervisor
    crow "worker start, exec to first frame: bench-worker, static runtime" cg cg_start_bench_worker_static "Ir" "shared runtime" cg cg_start_bench_worker_shared
    crow "worker start, exec to first frame: C child" cg cg_start_c_child "Ir" "static Swift" cg cg_start_bench_worker_static
    [ -s .build/callgrind/top_burst_supervisor.txt ] && { echo; sed 's/^/  /' .build/callgrind/top_burst_supervisor.txt; }
fi

if [ ${#NOTES[@]} -gt 0 ]; then
    printf "\nNotes:\n"
    for n in "${NOTES[@]}"; do printf "  - %s\n" "$n"; done
fi
if [ "$FAILURES" -gt 0 ]; then
    printf "\n%d job(s) FAILED: see %s\n" "$FAILURES" "$LOG"
fi
} | tee "$OUT/table.txt"

[ -n "$KEEP" ] && cp "$RESULTS" "$KEEP"
[ "$FAILURES" -eq 0 ]
