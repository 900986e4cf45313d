#!/usr/bin/env bash
# Fuzzes the seller API with schemathesis against the exchange's own GET /openapi.json.
#
# Installs a pinned schemathesis from PyPI into a venv under the cargo target directory
# (once; later runs reuse it), builds and starts the exchange on loopback with the
# embedded default configuration and its demo bidders (`--demo`, seller key
# `demo-seller-key`), runs schemathesis with the response checks below, bounded in
# examples and time, and exits non-zero on any failure or server error. The exchange is
# always stopped (trap). Part of the README's test command and of .ci/run.
set -euo pipefail
cd "$(dirname "$0")/../.."

ST_VERSION="4.32.5"
# Cases per operation, and a bound on the whole run (seconds): CI has 2 cores.
MAX_EXAMPLES="${SCHEMATHESIS_MAX_EXAMPLES:-60}"
MAX_TIME_S="${SCHEMATHESIS_MAX_TIME_S:-100}"
SEED="${SCHEMATHESIS_SEED:-20261129}"
SELLER_KEY="demo-seller-key"
CHECKS="not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance,positive_data_acceptance,negative_data_rejection,unsupported_method,missing_required_header"

TARGET="${CARGO_TARGET_DIR:-$PWD/target}"
mkdir -p "$TARGET"
TARGET="$(cd "$TARGET" && pwd)"
VENV="$TARGET/schemathesis-venv"
PYTHON="$(command -v python3.11 || command -v python3)"

if ! "$VENV/bin/st" --version 2>/dev/null | grep -qF "$ST_VERSION"; then
    echo "schemathesis: installing $ST_VERSION into $VENV"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$ST_VERSION"
fi

WORK="$(mktemp -d "$TARGET/schemathesis-run.XXXXXX")"
PID=""
cleanup() {
    if [ -n "$PID" ]; then
        kill "$PID" 2>/dev/null || true
        wait "$PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# Built and copied at once: a target directory shared with other checkouts may get
# another build of the binary at the same path.
cargo build --quiet -p pingpost --bin pingpost
BIN="$WORK/pingpost"
cp "$TARGET/debug/pingpost" "$BIN"

# A free loopback port (the kernel's pick, released just before the exchange binds it).
PORT="$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
# One sample lead at start, then quiet: the fuzzer's requests are the traffic.
"$BIN" --demo --demo-interval-ms 3600000 --listen "127.0.0.1:$PORT" \
    --ledger "$WORK/ledger" >"$WORK/exchange.log" 2>&1 &
PID=$!

status=0
# Run from the scratch directory: schemathesis and hypothesis leave caches (.schemathesis,
# .hypothesis) in the working directory, and the checkout must stay clean.
CONFIG="$PWD/exchange/tests/schemathesis.toml"
cd "$WORK"
# The exchange's document bounds money by `x-decimal-places: 6`, not by a `multipleOf`
# (validators check that in floating point and refuse prices such as 1.1). For the
# fuzzer the bound becomes a multipleOf again, so the values it calls valid are ones the
# exchange takes (at most 6 decimals).
"$PYTHON" - "http://127.0.0.1:$PORT/openapi.json" "$WORK/openapi.json" <<'PY'
import json, sys, time, urllib.request
url, out = sys.argv[1], sys.argv[2]
deadline = time.monotonic() + 60
while True:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            doc = json.load(r)
        break
    except Exception as e:
        if time.monotonic() > deadline:
            sys.exit(f"schemathesis: no schema at {url} within 60 s: {e}")
        time.sleep(0.2)
def walk(v):
    if isinstance(v, dict):
        if v.get("x-decimal-places") == 6:
            v["multipleOf"] = 0.000001
        for x in v.values():
            walk(x)
    elif isinstance(v, list):
        for x in v:
            walk(x)
walk(doc)
json.dump(doc, open(out, "w"))
PY
"$VENV/bin/st" --config-file "$CONFIG" run "$WORK/openapi.json" \
    --url "http://127.0.0.1:$PORT" \
    --header "Authorization: Bearer $SELLER_KEY" \
    --checks "$CHECKS" \
    --max-examples "$MAX_EXAMPLES" \
    --max-time "$MAX_TIME_S" \
    --seed "$SEED" \
    --workers 2 \
    --request-timeout 10 \
    --generation-database none \
    --no-color || status=$?

if ! kill -0 "$PID" 2>/dev/null; then
    echo "schemathesis: the exchange died during the run; its log:" >&2
    tail -n 50 "$WORK/exchange.log" >&2
    status=1
fi
if grep -q "panicked" "$WORK/exchange.log"; then
    echo "schemathesis: the exchange panicked; its log:" >&2
    grep -B2 -A10 "panicked" "$WORK/exchange.log" | head -n 60 >&2
    status=1
fi
exit "$status"
