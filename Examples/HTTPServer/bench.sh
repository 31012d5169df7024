#!/usr/bin/env bash
# Measures the HTTP example with wrk: the same CPU-bound job run by the pool (/pool/work) and in
# the server's handler (/inline/work), (a) fast requests alone, (b) fast requests while a second
# wrk keeps a few slow requests going. Prints a table, and the ratios pool/inline from this run.
#
#   Examples/HTTPServer/bench.sh [SECONDS]     # seconds per measurement, default 15 (about 2 min in all)
#
# Settings (environment): FAST_N (rounds of a fast request, 20000), SLOW_N (of a slow one,
# 200000000), CONNECTIONS (fast wrk connections, 16), SLOW_CONNECTIONS (2), WORKERS (2 per CPU).
# Installs wrk with apt-get when it is missing (as root, or through sudo).
set -euo pipefail
cd "$(dirname "$0")"

seconds=${1:-15}
fast_n=${FAST_N:-20000}
slow_n=${SLOW_N:-200000000}
connections=${CONNECTIONS:-16}
slow_connections=${SLOW_CONNECTIONS:-2}
workers=${WORKERS:-$((2 * $(nproc)))}
case "$seconds" in ''|*[!0-9]*|0) echo "usage: $0 [SECONDS]" >&2; exit 64 ;; esac

../../scripts/ensure-deps.sh
if ! command -v wrk >/dev/null 2>&1; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || { echo "Please install wrk as root: apt-get install -y wrk" >&2; exit 1; }
        sudo="sudo"
    fi
    echo "Installing wrk..." >&2
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq wrk >/dev/null
fi

swift build -c release 2>&1 | grep -v "unhandled; explicitly declare them as resources" || exit 1
bin=$(swift build -c release --show-bin-path)

log=$(mktemp)
results=$(mktemp -d)
pid=""
cleanup() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
    rm -rf "$log" "$results"
}
trap cleanup EXIT

"$bin/lpm-http-server" --port 0 --workers "$workers" --queue 4096 --timeout-ms 120000 >"$log" 2>&1 &
pid=$!
port=""
for _ in $(seq 1 300); do
    port=$(sed -n 's|^listening on http://127.0.0.1:\([0-9]*\)$|\1|p' "$log")
    [ -n "$port" ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
done
[ -n "$port" ] || { cat "$log" >&2; echo "the server did not start" >&2; exit 1; }
url="http://127.0.0.1:$port"

# Requests of each kind alone, to say what "fast" and "slow" mean here: the quickest of a few.
single() {  # single PATH COUNT
    for _ in $(seq 1 "$2"); do curl -sS -o /dev/null --max-time 120 -w '%{time_total}\n' "$url/$1"; done | sort -g | head -n 1
}
fast_alone=$(single "inline/work?n=$fast_n" 5)
slow_alone=$(single "inline/work?n=$slow_n" 2)

# run NAME wrk-arguments...: runs wrk, keeps its RESULT line in $results/NAME.
run() {
    local name=$1; shift
    wrk -t1 --timeout 60s --latency -s report.lua "$@" | grep '^RESULT' >"$results/$name" || echo "RESULT failed" >"$results/$name"
}
field() { sed -n "s/.*[ ]$2=\([0-9.]*\).*/\1/p" "$results/$1"; }

load_before=$(cut -d' ' -f1 /proc/loadavg)
for mode in pool inline; do
    fast="$url/$mode/work?n=$fast_n"
    slow="$url/$mode/work?n=$slow_n"
    wrk -t1 -c"$connections" -d2s "$fast" >/dev/null  # warm-up
    echo "measuring $mode: fast alone (${seconds}s)..." >&2
    run "$mode-fast" -c"$connections" -d"${seconds}s" "$fast"
    echo "measuring $mode: fast with $slow_connections slow connections (${seconds}s)..." >&2
    # The slow wrk starts first and ends last, so that every fast request meets slow ones.
    run "$mode-slow" -c"$slow_connections" -d"$((seconds + 3))s" "$slow" &
    slow_wrk=$!
    sleep 1
    run "$mode-mixed" -c"$connections" -d"${seconds}s" "$fast"
    wait "$slow_wrk"
done

load_after=$(cut -d' ' -f1 /proc/loadavg)
kill -TERM "$pid"
wait "$pid" || true
pid=""

ms() { awk -v us="$1" 'BEGIN { printf "%.2f", us / 1000 }'; }
ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN {
        if (b <= 0) { print "-"; exit }
        r = a / b
        if (r >= 10) printf "%.0f", r; else if (r >= 0.1) printf "%.2f", r; else printf "%.4f", r
    }'
}

echo
echo "HTTP example, $(nproc) CPUs, $workers workers, ${seconds}s per run; fast = $fast_n rounds" \
     "($(ms "$(awk -v s="$fast_alone" 'BEGIN { print s * 1e6 }')") ms alone, inline, curl's best of 5)," \
     "slow = $slow_n rounds ($(awk -v s="$slow_alone" 'BEGIN { printf "%.0f", s * 1000 }') ms alone, best of 2)"
echo "fast: wrk -t1 -c$connections; slow: wrk -t1 -c$slow_connections. Latencies in ms." \
     "Load average (1 min) before and after: $load_before, $load_after."
echo
printf '| %-6s | %-32s | %9s | %8s | %8s | %8s | %6s | %9s |\n' where run 'req/s' p50 p99 max errors 'slow done'
printf '|%s|%s|%s|%s|%s|%s|%s|%s|\n' -------- ---------------------------------- ----------- ---------- ---------- ---------- -------- -----------
for mode in pool inline; do
    for run_name in fast mixed; do
        r="$mode-$run_name"
        label="fast alone"
        slow_done="-"
        if [ "$run_name" = mixed ]; then
            label="fast, $slow_connections slow requests in flight"
            slow_done=$(field "$mode-slow" requests)
        fi
        printf '| %-6s | %-32s | %9s | %8s | %8s | %8s | %6s | %9s |\n' "$mode" "$label" \
            "$(field "$r" rps)" "$(ms "$(field "$r" p50_us)")" "$(ms "$(field "$r" p99_us)")" \
            "$(ms "$(field "$r" max_us)")" "$(field "$r" errors)" "$slow_done"
    done
done
echo
echo "pool/inline, fast alone:      req/s $(ratio "$(field pool-fast rps)" "$(field inline-fast rps)")," \
     "p50 $(ratio "$(field pool-fast p50_us)" "$(field inline-fast p50_us)")," \
     "p99 $(ratio "$(field pool-fast p99_us)" "$(field inline-fast p99_us)")"
echo "pool/inline, with slow load:  req/s $(ratio "$(field pool-mixed rps)" "$(field inline-mixed rps)")," \
     "p50 $(ratio "$(field pool-mixed p50_us)" "$(field inline-mixed p50_us)")," \
     "p99 $(ratio "$(field pool-mixed p99_us)" "$(field inline-mixed p99_us)")"
echo "slow load / alone, fast p99:  pool $(ratio "$(field pool-mixed p99_us)" "$(field pool-fast p99_us)")," \
     "inline $(ratio "$(field inline-mixed p99_us)" "$(field inline-fast p99_us)")"
