#!/usr/bin/env bash
# Watch latency: from the last write of a file to the start of its invocation, over N files
# (default 200) dropped one by one into a watched folder with debounce = "50ms".
# Prints p50, p99 and max in ms.
#   bench/watch-latency.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-200}
cargo build --quiet --release
cargo build --quiet --release --manifest-path tests/guests/Cargo.toml --target-dir target/guests --target wasm32-wasip1 -p probe
dir=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
mkdir -p "$dir/functions" "$dir/inbox"
cp target/guests/wasm32-wasip1/release/probe.wasm "$dir/functions/onfile.wasm"
cat > "$dir/runtime.toml" <<TOML
[host]
listen = "127.0.0.1:0"
[functions.onfile]
triggers = [{ watch = "inbox", debounce = "50ms" }]
env = { PROBE_EVENT = "env" }
TOML
./target/release/jobhost --config "$dir/runtime.toml" up >"$dir/log.txt" 2>&1 &
pid=$!
for _ in $(seq 1 100); do grep -q 'watching' "$dir/log.txt" && break; sleep 0.1; done
addr=$(grep -o 'listening on http://[0-9.:]*' "$dir/log.txt" | sed 's/listening on //')
python3 - "$addr" "$n" "$dir/inbox" <<'PY'
import json, os, sys, time, urllib.request
from datetime import datetime
addr, n, inbox = sys.argv[1], int(sys.argv[2]), sys.argv[3]
written = {}
for i in range(n):
    path = os.path.join(inbox, f"f{i}.txt")
    with open(path, "w") as f:
        f.write("x" * 100)
    written[f"/input/f{i}.txt"] = time.time() * 1000
    time.sleep(0.02)
def ms(text): return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000
while True:
    rows = json.load(urllib.request.urlopen(f"{addr}/_jobhost/invocations?function=onfile&state=succeeded&limit=1000"))
    if len(rows) >= n: break
    time.sleep(0.2)
late = []
for r in rows:
    path = next(l.split("=", 1)[1] for l in r["stdout"].splitlines() if l.startswith("JOBHOST_FILE_PATH="))
    late.append(ms(r["started_at"]) - written[path])
late.sort()
print(f"files: {len(late)}  write-to-start ms: p50 {late[len(late)//2]:.0f}  p99 {late[int(len(late)*0.99)-1]:.0f}  max {late[-1]:.0f}  min {late[0]:.0f}")
PY
