#!/usr/bin/env bash
# Timer lateness: how long after its occurrence each run of an `every = "100ms"` timer
# started, over N occurrences (default 200). Prints p50, p99 and max in ms.
#   bench/timer-lateness.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-200}
cargo build --quiet --release
cargo build --quiet --release --manifest-path tests/guests/Cargo.toml --target-dir target/guests --target wasm32-wasip1 -p probe
dir=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
mkdir -p "$dir/functions"
cp target/guests/wasm32-wasip1/release/probe.wasm "$dir/functions/tick.wasm"
cat > "$dir/runtime.toml" <<TOML
[host]
listen = "127.0.0.1:0"
[functions.tick]
triggers = [{ every = "100ms" }]
TOML
./target/release/jobhost --config "$dir/runtime.toml" up >"$dir/log.txt" 2>&1 &
pid=$!
for _ in $(seq 1 100); do grep -q 'listening on' "$dir/log.txt" && break; sleep 0.1; done
addr=$(grep -o 'listening on http://[0-9.:]*' "$dir/log.txt" | sed 's/listening on //')
python3 - "$addr" "$n" <<'PY'
import json, sys, time, urllib.request
from datetime import datetime
addr, n = sys.argv[1], int(sys.argv[2])
def ms(text): return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000
while True:
    rows = json.load(urllib.request.urlopen(f"{addr}/_jobhost/invocations?function=tick&state=succeeded&limit=1000"))
    if len(rows) >= n + 5: break
    time.sleep(0.5)
late = []
for r in rows[:n]:
    at = next(l.split("=", 1)[1] for l in r["stdout"].splitlines() if l.startswith("JOBHOST_SCHEDULED_AT="))
    late.append(ms(r["started_at"]) - ms(at))
late.sort()
print(f"occurrences: {len(late)}  lateness ms: p50 {late[len(late)//2]:.0f}  p99 {late[int(len(late)*0.99)-1]:.0f}  max {late[-1]:.0f}  min {late[0]:.0f}")
PY
