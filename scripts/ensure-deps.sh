#!/usr/bin/env bash
# Installs the system packages the build needs, when they are missing: liburing-dev (the CLoop
# module links liburing and pkg-config finds it as `liburing`), and pkg-config itself.
set -euo pipefail
missing=()
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
if ! pkg-config --exists liburing 2>/dev/null && [ ! -f /usr/include/liburing.h ]; then
    missing+=(liburing-dev)
fi
[ ${#missing[@]} -eq 0 ] && exit 0
echo "Installing ${missing[*]} (needed to build LoadProcessManager)..." >&2
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "Please install as root: apt-get install -y ${missing[*]}" >&2; exit 1; }
    sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq "${missing[@]}" >/dev/null
echo "Installed ${missing[*]}." >&2
