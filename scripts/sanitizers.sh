#!/usr/bin/env bash
# Runs the test suite under ThreadSanitizer and AddressSanitizer (docs/SANITIZERS.md).
#
#   scripts/sanitizers.sh [thread|address]...      default: both
#
# Each sanitizer builds in a scratch folder of its own (.build-tsan, .build-asan): a first build
# takes a few minutes on 2 cores. Exits non-zero if a run fails.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/ensure-deps.sh
kinds=("$@")
[ ${#kinds[@]} -eq 0 ] && kinds=(thread address)
status=0
for kind in "${kinds[@]}"; do
    case "$kind" in
        thread)
            echo "== ThreadSanitizer" >&2
            TSAN_OPTIONS="suppressions=$PWD/scripts/tsan.supp halt_on_error=0 ${TSAN_OPTIONS:-}" \
                swift test --sanitize=thread --scratch-path .build-tsan || status=1 ;;
        address)
            echo "== AddressSanitizer" >&2
            ASAN_OPTIONS="detect_leaks=0 ${ASAN_OPTIONS:-}" \
                swift test --sanitize=address --scratch-path .build-asan || status=1 ;;
        *) echo "usage: $0 [thread|address]..." >&2; exit 2 ;;
    esac
done
exit $status
