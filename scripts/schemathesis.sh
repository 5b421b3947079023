#!/usr/bin/env bash
# Checks a live server against its own OpenAPI document with schemathesis: no 5xx, every status,
# content type and body as documented. Usage: scripts/schemathesis.sh [server binary]
# (default target/debug/projector). Installs schemathesis into target/schemathesis-venv.
#
# The `/live` and `/changes` routes are left out: an SSE response never ends, so there is no body to check.
set -euo pipefail
cd "$(dirname "$0")/.."
binary=${1:-target/debug/projector}
venv=target/schemathesis-venv
if [ ! -x "$venv/bin/schemathesis" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet 'schemathesis==4.32.5'
fi

data=$(mktemp -d)
out=$(mktemp)
"$binary" serve --data "$data/data" --projections "$data/deploy" --listen 127.0.0.1:0 >"$out" 2>"$data/server.log" &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$data" "$out"' EXIT
for _ in $(seq 1 300); do
    grep -q '^listening on ' "$out" && break
    sleep 0.1
done
base=$(sed -n 's/^listening on //p' "$out")
[ -n "$base" ] || { echo "the server did not start"; cat "$data/server.log"; exit 1; }

"$venv/bin/schemathesis" --config-file scripts/schemathesis.toml run "$base/openapi.json" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --exclude-path-regex '/(live|changes)$' \
    --max-examples 50 \
    --request-timeout 20 \
    --generation-deterministic \
    --suppress-health-check all
