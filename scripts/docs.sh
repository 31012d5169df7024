#!/usr/bin/env bash
# Builds the DocC catalogs with swift-docc-plugin, warnings as errors; exits non-zero on any
# DocC warning or error.
#
#   .build/docs/LoadProcessManager.doccarchive   the five products, combined in one archive
#   .build/docs/LPMWire.doccarchive              the wire module, for contributors
#
# Package.swift names swift-docc-plugin only when LPM_DOCS is set (this script sets it), so a
# plain `swift build` or `swift test` never compiles the plugin.
#
# Links between modules: DocC converts one module at a time, so a symbol link to another module
# resolves only against that module's archive. The products are built with the plugin's
# `--enable-experimental-combined-documentation`, which converts them in dependency order and
# hands each conversion its dependencies' archives: a module links to a symbol or an article of
# a module it depends on with a leading slash, ``/LoadProcessManager/SupervisorConfiguration``
# or <doc:/LPMReactor/ChildProcessesAndSignals>. A module that does not depend on the other (the
# worker runtime on the supervisor) names it in code voice. Converting one product alone,
# without the flag, reports those links as warnings.
#
# LPMWire is not a product: its API is `package`. Its catalog is built on its own, with the
# symbol graph's minimum access level lowered to `package`.
#
# Preview in a browser:
#   LPM_DOCS=1 swift package --disable-sandbox preview-documentation --target LoadProcessManager
set -euo pipefail
cd "$(dirname "$0")/.."
export LPM_DOCS=1

products=(LPMReactor LoadProcessManager LoadProcessManagerWorker LoadProcessManagerCodable LoadProcessManagerServiceLifecycle)
out=.build/docs
rm -rf "$out"; mkdir -p "$out"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0

# Runs one `generate-documentation`; fails on a non-zero exit or on any diagnostic in its output.
generate() {
    local name=$1; shift
    echo "== $name"
    if ! swift package --allow-writing-to-directory "$out" generate-documentation "$@" \
        --warnings-as-errors >"$log" 2>&1; then
        status=1
    fi
    if grep -q -E '(^|: )(warning|error):' "$log"; then
        status=1
        grep -v -E '^(Building for|\[[0-9]+/[0-9]+\]|Build of |Compiling plugin|Write )' "$log"
    else
        grep -E '^Generated .*archive' -A1 "$log" || true
    fi
}

targets=()
for p in "${products[@]}"; do targets+=(--target "$p"); done
generate "${products[*]}" --enable-experimental-combined-documentation "${targets[@]}" \
    --output-path "$out/LoadProcessManager.doccarchive"
generate LPMWire --target LPMWire --symbol-graph-minimum-access-level package \
    --output-path "$out/LPMWire.doccarchive"

if [ $status -ne 0 ]; then
    echo "docs: FAILED (DocC warnings are errors)" >&2
else
    echo "docs: ${#products[@]} products and LPMWire built in $out without a warning"
fi
exit $status
