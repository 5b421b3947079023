#!/usr/bin/env bash
# The hostile-client load (idle, slow and silent connections, NDJSON readers and live
# subscribers that never read, pages of large events, SIGTERM with stalled clients), against
# a release server started with a soft limit of 1,024 open files: prints for each load whether
# /health, an append and a view GET answer within 100 ms, and the server's memory.
#
#   scripts/abuse.sh                 # this build
#   scripts/abuse.sh path/to/projector   # another build of the server, to compare
set -euo pipefail
cd "$(dirname "$0")/.."
rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
if [ $# -gt 0 ]; then export PROJECTOR_ABUSE_BINARY="$(realpath "$1")"; fi
cargo test --release --test it abuse_report -- --ignored --nocapture
