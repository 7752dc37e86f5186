#!/usr/bin/env bash
# Start-up time of `jobhost up` with N distinct modules (default 50), cold (empty compile
# cache) and warm (second start on the same data folder). Prints the host's own startup_ms.
#   bench/restart.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-50}
cargo build --quiet --release
./run build target/bench-guests >/dev/null
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir/functions"
# Distinct modules: the same component with a different custom section appended to each.
python3 - "$dir/functions" "$n" <<'PY'
import sys
dest, n = sys.argv[1], int(sys.argv[2])
src = open("target/bench-guests/cgi-command.wasm", "rb").read()
def leb(v):
    out = bytearray()
    while True:
        b = v & 0x7f; v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v: return bytes(out)
for i in range(n):
    name = b"bench"; payload = str(i).encode()
    body = leb(len(name)) + name + payload
    open(f"{dest}/f{i}.wasm", "wb").write(src + b"\x00" + leb(len(body)) + body)
PY
printf '[host]\nlisten = "127.0.0.1:0"\n' > "$dir/runtime.toml"
start() {
  local log="$dir/log.txt"
  ./target/release/jobhost --config "$dir/runtime.toml" up >"$log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 600); do
    if grep -q 'listening on' "$log"; then break; fi
    sleep 0.1
  done
  grep -o 'startup_ms=[0-9]*' "$log"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}
echo "modules: $n"
echo -n "cold (compiling): "; start
echo -n "warm (cached):    "; start
