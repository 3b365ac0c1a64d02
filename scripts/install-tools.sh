#!/usr/bin/env bash
# System tools the benchmarks and their tests need, from Debian's packages: wrk, the C load
# generator that drives `receipt-streams bench latency` (a Python client would take a core
# from the system it measures). Installs only what is missing.
set -euo pipefail
missing=()
command -v wrk >/dev/null || missing+=(wrk)
[ ${#missing[@]} -eq 0 ] && exit 0
as_root=()
[ "$(id -u)" -eq 0 ] || as_root=(sudo)
if ! "${as_root[@]}" apt-get install -y -q "${missing[@]}" >/dev/null; then
  "${as_root[@]}" apt-get update -q >/dev/null
  "${as_root[@]}" apt-get install -y -q "${missing[@]}" >/dev/null
fi
