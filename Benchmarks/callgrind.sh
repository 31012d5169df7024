#!/usr/bin/env bash
# callgrind.sh: instructions per request, counted by valgrind's callgrind: a figure that does
# not depend on what else the machine is doing (the same binary and input give the same count
# within a fraction of a percent), unlike every timing on this shared VM.
#
#   ./callgrind.sh               the default sizes (about a minute here, after the build)
#   ./callgrind.sh --smoke       tiny sizes (seconds); the figures are then rough
#   ./callgrind.sh --no-build    reuse the binaries compare.sh or an earlier run built
#   ./callgrind.sh --top K       list the K costliest functions (default 15)
#
# Each job runs twice under `valgrind --tool=callgrind --trace-children=yes`, with N1 and then
# N2 requests (N1 < N2); every process writes its own count. Per request:
#     (Ir(N2) - Ir(N1)) / (requests(N2) - requests(N1))
# for the first process (the supervisor, or the C parent) and for all its children together (the
# workers, or the C children): start-up, warm-up and shutdown cancel out. Ir counts the
# instructions run in user space only; the kernel's share of each system call is not in it.
#
# Jobs: `lpm-compare burst` (also by thread: `cg_lpm_burst_reactor` and `_caller`), `rt-chained`
# and `rt-async` (Sources/lpm-compare), and the C
# baselines `echo` (batched pipelined echo) and `pingpong` (Baselines/baselines.c). Then the
# instructions a worker runs from exec to its first frame (start-up; python3 needed).
# Output: `name=cg_<job>_<side> value=<Ir per request> unit=Ir/req` lines on stdout (the format
# compare.sh records), and the functions that cost the most per request in the burst, the
# difference of the two runs function by function, in .build/callgrind/top_*.txt.
#
# Needs valgrind (callgrind_annotate comes with it), gcc, swift; python3 for the start-up counts.
# The reactor picks epoll under valgrind by itself (valgrind never completes an io_uring wait),
# and falls back to epoll_wait (valgrind refuses epoll_pwait2) and to SIGCHLD (it refuses
# pidfd_open): see Sources/LPMReactor/Docs.docc/Backends.md.
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")"
HERE=$PWD

SMOKE=0
BUILD=1
TOP=15
while [ $# -gt 0 ]; do
    case "$1" in
        --smoke) SMOKE=1 ;;
        --no-build) BUILD=0 ;;
        --top) TOP="$2"; shift ;;
        -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
        *) echo "callgrind.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

command -v valgrind >/dev/null 2>&1 || { echo "callgrind.sh: valgrind is not installed (apt-get install valgrind)" >&2; exit 3; }

if [ "$SMOKE" = 1 ]; then
    BURST=(300 900); RT=(100 300); C_ECHO=(2000 6000); C_RT=(1000 3000)
    TIMEOUT=300
else
    BURST=(10000 50000); RT=(2000 10000); C_ECHO=(100000 500000); C_RT=(20000 100000)
    TIMEOUT=1800
fi

OUT=$HERE/.build/callgrind
mkdir -p "$OUT"
LOG=$OUT/log.txt
: > "$LOG"
BASELINES=$HERE/.build/compare/baselines
if [ "$BUILD" = 1 ]; then
    mkdir -p "$(dirname "$BASELINES")"
    echo "building the C baselines (gcc -O2) and lpm-compare (swift build -c release)" >&2
    gcc -O2 -Wall -Wextra -o "$BASELINES" Baselines/baselines.c
    swift build -c release --product lpm-compare >>"$LOG" 2>&1 || { tail -30 "$LOG" >&2; exit 1; }
    echo "building bench-worker with the Swift runtime linked statically (.build-static)" >&2
    swift build -c release --static-swift-stdlib --product bench-worker --scratch-path .build-static >>"$LOG" 2>&1 \
        || { tail -30 "$LOG" >&2; exit 1; }
fi
BIN=$(swift build -c release --show-bin-path)
LPM=$BIN/lpm-compare
[ -x "$LPM" ] && [ -x "$BIN/bench-worker" ] || { echo "callgrind.sh: $LPM or its bench-worker missing (run without --no-build)" >&2; exit 1; }
[ -x "$BASELINES" ] || { echo "callgrind.sh: $BASELINES missing (run without --no-build)" >&2; exit 1; }
# The worker compare.sh spawns: built with the runtime linked statically where there is one.
STATIC_WORKER=$HERE/.build-static/release/bench-worker
[ -x "$STATIC_WORKER" ] || STATIC_WORKER=$BIN/bench-worker
export LPM_BENCH_WORKER=${LPM_BENCH_WORKER:-$STATIC_WORKER}
# The automatic backend choice is what runs under valgrind; no busy polling (it would count
# instructions per unit of time, not per request).
unset LPM_REACTOR_BACKEND LPM_BUSY_POLL_US

# Requests a job really sends for N (see lpm-compare's main.swift and baselines.c): `burst` sends
# min(N, 20000) more to warm up; rt-* and pingpong min(max(N/10, 1000), 10000); echo none.
requests() {  # KIND N
    local n=$2 w
    case "$1" in
        burst) echo $(( n + (n < 20000 ? n : 20000) )) ;;
        rt) w=$(( n / 10 )); [ $w -lt 1000 ] && w=1000; [ $w -gt 10000 ] && w=10000; echo $(( n + w )) ;;
        *) echo "$n" ;;
    esac
}

# profile DIR CMD...: runs CMD under callgrind; DIR gets one callgrind.out.PID and one log per process.
profile() {
    local dir=$1; shift
    rm -rf "$dir"; mkdir -p "$dir"
    timeout "$TIMEOUT" valgrind --tool=callgrind --trace-children=yes \
        --callgrind-out-file="$dir/callgrind.out.%p" --log-file="$dir/valgrind.%p.log" "$@" >>"$LOG" 2>&1
}

# sides DIR: "<root Ir> <children Ir>", the first process being the one whose parent was not
# traced (valgrind's log names each process's parent).
sides() {
    local dir=$1
    for f in "$dir"/valgrind.*.log; do
        local pid=${f##*/valgrind.}; pid=${pid%.log}
        local ppid; ppid=$(sed -n 's/^==[0-9]*== Parent PID: \([0-9]*\)$/\1/p' "$f")
        local ir; ir=$(sed -n 's/^summary: //p' "$dir/callgrind.out.$pid" 2>/dev/null || true)
        echo "$pid $ppid ${ir:-0}"
    done | awk '{ pid[NR] = $1; parent[NR] = $2; ir[NR] = $3; known[$1] = 1 }
        END { for (i = 1; i <= NR; i++) if (known[parent[i]]) c += ir[i]; else r += ir[i]; printf "%d %d\n", r, c }'
}

FAILED=0
# job LABEL KIND N1 N2 CMD... (CMD gets N appended): prints the two figures.
job() {
    local label=$1 kind=$2 n1=$3 n2=$4; shift 4
    echo "callgrind: $label (N = $n1, then $n2)" >&2
    if ! profile "$OUT/$label.1" "$@" "$n1" || ! profile "$OUT/$label.2" "$@" "$n2"; then
        echo "  FAILED: $* (see $LOG)" >&2
        FAILED=$((FAILED + 1))
        return
    fi
    local r1 r2
    r1=$(requests "$kind" "$n1"); r2=$(requests "$kind" "$n2")
    read -r s1 c1 < <(sides "$OUT/$label.1")
    read -r s2 c2 < <(sides "$OUT/$label.2")
    awk -v l="$label" -v s1="$s1" -v s2="$s2" -v c1="$c1" -v c2="$c2" -v d=$((r2 - r1)) 'BEGIN {
        printf "name=cg_%s_supervisor value=%.0f unit=Ir/req\n", l, (s2 - s1) / d
        printf "name=cg_%s_workers value=%.0f unit=Ir/req\n", l, (c2 - c1) / d }'
}

job lpm_burst burst "${BURST[@]}" "$LPM" burst
# The burst's supervisor by thread: the reactor thread (the target of the hot path) and the
# caller's thread (which hands requests over through the inbox). The supervisor alone, threads
# counted apart (--separate-threads); its workers run untraced.
threads() {
    local n1=$1 n2=$2 d
    echo "callgrind: lpm_burst by thread (N = $n1, then $n2)" >&2
    for n in "$n1" "$n2"; do
        local dir=$OUT/lpm_burst_threads.$n
        rm -rf "$dir"; mkdir -p "$dir"
        if ! timeout "$TIMEOUT" valgrind --tool=callgrind --separate-threads=yes \
                --callgrind-out-file="$dir/callgrind.out" --log-file="$dir/valgrind.log" "$LPM" burst "$n" >>"$LOG" 2>&1; then
            echo "  FAILED: $LPM burst $n, by thread (see $LOG)" >&2
            FAILED=$((FAILED + 1))
            return
        fi
    done
    d=$(( $(requests burst "$n2") - $(requests burst "$n1") ))
    # Thread 1 is the caller's (main) thread, thread 2 the reactor's (started first by Supervisor.init).
    for t in 01:caller 02:reactor; do
        local a b
        a=$(sed -n 's/^summary: //p' "$OUT/lpm_burst_threads.$n1/callgrind.out-${t%%:*}" 2>/dev/null || echo 0)
        b=$(sed -n 's/^summary: //p' "$OUT/lpm_burst_threads.$n2/callgrind.out-${t%%:*}" 2>/dev/null || echo 0)
        awk -v t="${t#*:}" -v a="${a:-0}" -v b="${b:-0}" -v d="$d" 'BEGIN { printf "name=cg_lpm_burst_%s value=%.0f unit=Ir/req\n", t, (b - a) / d }'
    done
}
threads "${BURST[@]}"
job lpm_rt_chained rt "${RT[@]}" "$LPM" rt-chained
job lpm_rt_async rt "${RT[@]}" "$LPM" rt-async
job c_echo echo "${C_ECHO[@]}" "$BASELINES" echo
job c_pingpong rt "${C_RT[@]}" "$BASELINES" pingpong

# ---------------------------------------------------------------- start-up
# Instructions from exec to the first frame, plus the exit on end-of-file that follows (a few
# thousand): Tools/first_byte.py stands in for the supervisor (a killed process leaves no count).
# For bench-worker with the Swift runtime linked statically (.build-static, which compare.sh
# builds with --static-swift-stdlib) and linked against the shared runtime (.build/release), and
# for a C child.
start() {  # NAME CMD...
    local name=$1; shift
    local dir=$OUT/start_$name
    echo "callgrind: start-up, $name" >&2
    rm -rf "$dir"; mkdir -p "$dir"
    if timeout "$TIMEOUT" python3 Tools/first_byte.py valgrind --tool=callgrind \
            --callgrind-out-file="$dir/callgrind.out.%p" --log-file="$dir/valgrind.%p.log" "$@" >>"$LOG" 2>&1; then
        sed -n 's/^summary: //p' "$dir"/callgrind.out.* | awk -v n="$name" '{ printf "name=cg_start_%s value=%d unit=Ir\n", n, $1 }'
    else
        echo "  FAILED: start-up of $* (see $LOG)" >&2
        FAILED=$((FAILED + 1))
    fi
}
linking() { ldd "$1" 2>/dev/null | grep -q libswiftCore && echo shared || echo static; }
if command -v python3 >/dev/null 2>&1; then
    for w in "$HERE/.build-static/release/bench-worker" "$BIN/bench-worker"; do
        [ -x "$w" ] && start "bench_worker_$(linking "$w")" "$w"
    done
    start c_child "$BASELINES" __spawn-child
else
    echo "callgrind.sh: python3 missing: no start-up counts" >&2
fi

# ---------------------------------------------------------------- where the burst's cost goes
# functions FILE...: "Ir<TAB>file:function" for each function, summed over the files (self cost,
# as callgrind_annotate --inclusive=no reports it). The source file is cut to its base name,
# and the "[object]" callgrind_annotate prints only where it changes from the line above is
# dropped, so that the same function has the same key in every run.
functions() {
    for f in "$@"; do
        callgrind_annotate --inclusive=no --threshold=100 --auto=no "$f" 2>>"$LOG" |
            sed -n 's/^ *\([0-9,][0-9,]*\) ([ 0-9.]*%)  \(.*\)$/\1\t\2/p' | grep -v 'PROGRAM TOTALS' | tr -d ',' |
            sed 's/ \[[^][]*\]$//; s|\t[^:\t]*/\([^/:]*:\)|\t\1|; s/\t???:/\t/; s/\t<compiler-generated>:/\t/'
    done | awk -F'\t' '{ s[$2] += $1 } END { for (k in s) printf "%d\t%s\n", s[k], k }'
}
# top SIDE TITLE: the K functions whose cost grew most per request from the burst's N1 run to its N2 run.
top() {
    local side=$1 title=$2 d
    d=$(( $(requests burst "${BURST[1]}") - $(requests burst "${BURST[0]}") ))
    local files1=() files2=()
    for run in 1 2; do
        local dir=$OUT/lpm_burst.$run root
        root=$(for f in "$dir"/valgrind.*.log; do
            p=${f##*/valgrind.}; p=${p%.log}
            echo "$p $(sed -n 's/^==[0-9]*== Parent PID: \([0-9]*\)$/\1/p' "$f")"
        done | awk '{ pid[NR] = $1; par[NR] = $2; k[$1] = 1 } END { for (i = 1; i <= NR; i++) if (!k[par[i]]) print pid[i] }')
        for f in "$dir"/callgrind.out.*; do
            local is_root=0; [ "${f##*.}" = "$root" ] && is_root=1
            if { [ "$side" = supervisor ] && [ $is_root = 1 ]; } || { [ "$side" = workers ] && [ $is_root = 0 ]; }; then
                if [ $run = 1 ]; then files1+=("$f"); else files2+=("$f"); fi
            fi
        done
    done
    local demangle=(cat)
    command -v swift >/dev/null 2>&1 && demangle=(swift demangle --simplified --compact)
    {
        echo "$title"
        echo "(self cost per request: Ir(N2) - Ir(N1) by function, over $d requests; share of the side's total)"
        join -t$'\t' -a 2 -e 0 -1 2 -2 2 -o 0,1.1,2.1 \
            <(functions "${files1[@]}" | sort -t$'\t' -k2,2) <(functions "${files2[@]}" | sort -t$'\t' -k2,2) |
            awk -F'\t' -v d="$d" '{ x = ($3 - $2) / d; t += x; if (x > 0) print x "\t" $1 } END { print t "\tTOTAL" }' |
            sort -t$'\t' -k1,1 -g -r | awk -F'\t' -v k="$TOP" '
                $2 == "TOTAL" { total = $1; next }
                { n++; if (n <= k) { v[n] = $1; f[n] = $2 } }
                END { for (i = 1; i <= n && i <= k; i++) printf "%9.1f  %5.1f%%  %s\n", v[i], 100 * v[i] / total, f[i]
                      printf "%9.1f  100.0%%  (all functions)\n", total }' |
            "${demangle[@]}" | cut -c1-150
    } > "$OUT/top_burst_$side.txt"
}
if [ -d "$OUT/lpm_burst.2" ] && command -v callgrind_annotate >/dev/null 2>&1; then
    top supervisor "Supervisor (lpm-compare burst), top $TOP functions, Ir per request"
    top workers "Workers (2 x bench-worker, burst), top $TOP functions, Ir per request (both together)"
    echo "callgrind: the costliest functions are in $OUT/top_burst_supervisor.txt and top_burst_workers.txt" >&2
fi
[ "$FAILED" -eq 0 ]
