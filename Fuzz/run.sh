#!/bin/sh
# Builds FrameDecoderFuzz with libFuzzer and AddressSanitizer and runs it for [seconds]
# (default 20) with a fixed seed, from the seed corpus in Corpus/. New inputs go to
# .build/corpus (kept between runs), crashes to .build/artifacts/. Exits non-zero on a crash.
set -eu
cd "$(dirname "$0")"
seconds="${1:-20}"
# ld.gold warns about every sanitizer symbol it cannot export; the warnings mean nothing here.
swift build -c debug -Xswiftc -sanitize=fuzzer,address --product FrameDecoderFuzz 2>&1 \
    | grep -v "Cannot export local symbol" || true
test -x .build/debug/FrameDecoderFuzz
mkdir -p .build/corpus .build/artifacts
exec .build/debug/FrameDecoderFuzz -seed=1 -max_total_time="$seconds" -print_final_stats=1 \
    -artifact_prefix=.build/artifacts/ .build/corpus Corpus
