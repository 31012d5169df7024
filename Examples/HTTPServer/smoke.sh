#!/usr/bin/env bash
# Builds the HTTP example (debug), runs its tests, then starts the real server on a free port
# and checks every endpoint with curl, and that SIGTERM lets a request in flight finish, stops
# the server and leaves no worker behind. Exits non-zero on any failure; every wait is bounded.
#
#   Examples/HTTPServer/smoke.sh
set -euo pipefail
cd "$(dirname "$0")"

../../scripts/ensure-deps.sh
if ! command -v curl >/dev/null 2>&1; then
    sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq curl >/dev/null
fi

swift build --build-tests 2>&1 | grep -v "unhandled; explicitly declare them as resources" || exit 1
swift test --skip-build

bin=$(swift build --show-bin-path)
log=$(mktemp)
pid=""
failed=0
cleanup() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
    rm -f "$log"
}
trap cleanup EXIT

fail() { echo "smoke: FAIL: $*" >&2; failed=1; }
ok() { echo "smoke: ok: $*"; }

# 2 workers, requests time out after 500 ms (to see a 504).
"$bin/lpm-http-server" --port 0 --workers 2 --timeout-ms 500 >"$log" 2>&1 &
pid=$!
port=""
for _ in $(seq 1 600); do  # 60 s at most
    port=$(sed -n 's|^listening on http://127.0.0.1:\([0-9]*\)$|\1|p' "$log")
    [ -n "$port" ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
done
if [ -z "$port" ]; then cat "$log" >&2; echo "smoke: FAIL: the server did not start" >&2; exit 1; fi
url="http://127.0.0.1:$port"
ok "server $pid listening on $url"

# get PATH: sets status, body and headers (curl gives up after 20 s).
get() {
    local out
    out=$(curl -sS --max-time 20 -i "$url/$1" 2>&1) || { status=000; body=""; headers=""; return; }
    status=$(printf '%s' "$out" | head -n 1 | cut -d' ' -f2)
    headers=$(printf '%s' "$out" | sed -n '1,/^\r$/p')
    body=$(printf '%s' "$out" | sed '1,/^\r$/d')
}
header() { printf '%s' "$headers" | tr -d '\r' | sed -n "s/^$1: //Ip"; }
expect() {  # expect DESCRIPTION STATUS [BODY]
    if [ "$status" != "$2" ]; then fail "$1: status $status, expected $2 (body: ${body:0:200})"
    elif [ $# -ge 3 ] && [ "$body" != "$3" ]; then fail "$1: body '${body:0:200}', expected '$3'"
    else ok "$1"; fi
}

get health
expect "GET /health" 200 '{"workers":2,"ready":2,"queued":0,"pending":0,"shutDown":false}'

get "pool/work?n=1"
expect "GET /pool/work?n=1 (splitmix64's first output)" 200 e220a8397b1dcdaf
worker=$(header x-worker-pid)
if [ -n "$worker" ] && [ "$(awk '{print $4}' "/proc/$worker/stat" 2>/dev/null)" = "$pid" ]; then
    ok "x-worker-pid $worker is a child of the server"
else
    fail "x-worker-pid '$worker' is not a child of the server $pid"
fi

get "inline/work?n=1"
expect "GET /inline/work?n=1" 200 e220a8397b1dcdaf
[ -z "$(header x-worker-pid)" ] && ok "inline answers carry no worker pid" || fail "inline answer with a worker pid"

get "pool/work?n=1000000"; pooled=$body
get "inline/work?n=1000000"
expect "pool and inline agree for n=1000000" 200 "$pooled"

get "pool/stream?chunks=5&n=1000&delay=10"
expect "GET /pool/stream" 200
lines=$(printf '%s\n' "$body" | grep -cE '^chunk [0-4] [0-9a-f]{16}$' || true)
[ "$lines" = 5 ] && ok "the stream has its 5 lines" || fail "the stream has $lines good lines of 5: ${body:0:300}"
[ "$(header transfer-encoding)" = chunked ] && ok "the stream is sent chunked" || fail "the stream is not chunked"

get "pool/work?n=abc"
expect "GET /pool/work?n=abc is refused" 400
get "pool/stream?chunks=-1"
expect "GET /pool/stream?chunks=-1 is refused" 400
get "nowhere"
expect "GET /nowhere" 404

# 200 M rounds take seconds in a debug build: past the 500 ms timeout.
get "pool/work?n=200000000"
expect "a job past the request timeout" 504
get health
expect "the pool serves after a timeout (the worker is replaced)" 200
get "pool/work?n=1"
expect "GET /pool/work after a timeout" 200 e220a8397b1dcdaf

# SIGTERM while a streamed answer is in flight (6 lines, 200 ms apart): the answer completes,
# then the server stops, then the pool drains.
workers=$(cat /proc/[0-9]*/stat 2>/dev/null | awk -v p="$pid" '$4 == p { printf "%s ", $1 }')
stream=$(mktemp)
curl -sS --max-time 20 "$url/pool/stream?chunks=6&n=10&delay=200" >"$stream" 2>&1 &
client=$!
sleep 0.4
kill -TERM "$pid"
if wait "$client"; then
    [ "$(grep -c '^chunk ' "$stream")" = 6 ] && ok "a stream in flight at SIGTERM completes" || fail "the stream in flight was cut: $(cat "$stream")"
else
    fail "the request in flight at SIGTERM failed: $(cat "$stream")"
fi
rm -f "$stream"
for _ in $(seq 1 400); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done  # 40 s at most
if kill -0 "$pid" 2>/dev/null; then
    fail "the server did not stop within 40 s of SIGTERM"
else
    wait "$pid" && code=0 || code=$?
    [ "$code" = 0 ] && ok "the server stopped with status 0" || fail "the server exited with status $code"
    pid=""
fi
left=""
for w in $workers; do kill -0 "$w" 2>/dev/null && left="$left $w"; done
[ -z "$left" ] && ok "no worker left behind (were: $workers)" || fail "workers still running:$left"
grep -q "pool stopped" "$log" && ok "the pool drained" || fail "the log does not say the pool stopped"

if [ "$failed" != 0 ]; then
    echo "--- server log" >&2; cat "$log" >&2
    exit 1
fi
echo "smoke: all checks passed"
