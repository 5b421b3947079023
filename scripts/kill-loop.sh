#!/usr/bin/env bash
# SIGKILL loop: kills a `projector serve` under mixed load (16 appending clients, the example
# projections following, a blue/green rebuild under way, an SSE reader) N times (default 100)
# at random moments, and after each kill checks that every acknowledged append is stored once
# at its position and that every serving view equals a native run of its projection up to its
# checkpoint. Prints the totals. `cargo test` runs the same test with 30 kills.
set -euo pipefail
cd "$(dirname "$0")/.."
rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
PROJECTOR_KILLS="${1:-100}" cargo test --release --test it kill_loop -- --nocapture
