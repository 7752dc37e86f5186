#!/usr/bin/env bash
# A soak: ten minutes (or --seconds N) of mixed load on one host (sync HTTP through wrk,
# async submissions, a timer every second, files dropped into a watched folder), sampling
# every 10 s the host's resident memory, open file descriptors, store size, queue depth,
# the sync p99 and the slowest async submission. Everything should level off; the table
# goes into BENCHMARKS.md.
# JOBHOST=/path/to/jobhost soaks another build (then nothing is written to BENCHMARKS.md).
# Needs wrk (apt-get install wrk).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { echo "bench/soak.sh needs wrk: apt-get install wrk" >&2; exit 1; }
cargo build --quiet --release
./run build target/bench-guests >/dev/null
cargo build --quiet --release --manifest-path tests/guests/Cargo.toml --target-dir target/guests \
  --target wasm32-wasip1 -p probe
exec python3 - "$@" <<'PY'
import argparse, os, re, shutil, signal, socket, subprocess, sys, tempfile, threading, time
import urllib.request
from pathlib import Path

REPO = Path.cwd()
parser = argparse.ArgumentParser()
parser.add_argument("--seconds", type=int, default=600)
args = parser.parse_args()

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

tmp = Path(tempfile.mkdtemp(prefix="jobhost-soak-"))
(tmp / "functions").mkdir()
(tmp / "inbox").mkdir()
shutil.copy(REPO / "target/bench-guests/hello.wasm", tmp / "functions/hello.wasm")
shutil.copy(REPO / "target/guests/wasm32-wasip1/release/probe.wasm", tmp / "functions/work.wasm")
port = free_port()
(tmp / "runtime.toml").write_text(f'''
[host]
listen = "127.0.0.1:{port}"
# A minute, so that records are pruned within the run and the store's steady state shows.
retention = "1m"
[defaults]
retry = {{ attempts = 2, initial = "100ms" }}
[functions.work]
env = {{ PROBE_EVENT = "echo event" }}
triggers = [
  {{ http = "/work", methods = ["POST"] }},
  {{ http = "/work/later", methods = ["POST"], mode = "async" }},
  {{ every = "1s" }},
  {{ watch = "inbox" }},
]
''')
base = f"http://127.0.0.1:{port}"
binary = os.environ.get("JOBHOST") or str(REPO / "target/release/jobhost")
host = subprocess.Popen([binary, "up"], cwd=tmp,
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
for _ in range(200):
    try:
        urllib.request.urlopen(base + "/healthz", timeout=1)
        break
    except Exception:
        time.sleep(0.05)

stop = threading.Event()
counts = {"async": 0, "files": 0, "errors": 0}
# The slowest submission since the last sample: what a stall of the store costs a client.
slowest = [0.0]

def submit():
    while not stop.is_set():
        sent = time.time()
        try:
            req = urllib.request.Request(base + "/work/later", data=b"echo later", method="POST")
            urllib.request.urlopen(req, timeout=30)
            counts["async"] += 1
        except Exception:
            counts["errors"] += 1
        slowest[0] = max(slowest[0], time.time() - sent)
        time.sleep(0.05)

def drop_files():
    n = 0
    while not stop.is_set():
        (tmp / "inbox" / f"f{n % 50}.txt").write_text(f"file {n}")
        n += 1
        counts["files"] += 1
        time.sleep(0.5)

threads = [threading.Thread(target=submit), threading.Thread(target=drop_files)]
for t in threads:
    t.start()

def metric(text, name):
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0

def wrk_p99(seconds):
    out = subprocess.run(["wrk", "-t1", "-c8", f"-d{seconds}s", "--latency", base + "/hello"],
                         capture_output=True, text=True).stdout
    m = re.search(r"\s99%\s+([\d.]+)(us|ms|s)", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    return (float(m.group(1)) * scale[m.group(2)] if m else 0.0, float(rps.group(1)) if rps else 0.0)

def kib(status, field):
    return int(re.search(rf"{field}:\s+(\d+)", status).group(1))

rows = []
started = time.time()
try:
    while time.time() - started < args.seconds:
        p99, rps = wrk_p99(10)
        status = Path(f"/proc/{host.pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{host.pid}/fd"))
        text = urllib.request.urlopen(base + "/metrics", timeout=60).read().decode()
        rows.append({
            "t": int(time.time() - started),
            "rss": kib(status, "VmRSS") // 1024,
            # The part of it that is the program's own memory (heap, stacks, guests'
            # memories), not pages of its executable and libraries.
            "anon": kib(status, "RssAnon") // 1024,
            "fds": fds,
            "store": metric(text, "jobhost_store_bytes") / 1e6,
            "queue": int(metric(text, "jobhost_queue_depth")),
            "p99": p99, "rps": rps,
            "submit": slowest[0] * 1000,
        })
        slowest[0] = 0.0
        print(rows[-1], file=sys.stderr, flush=True)
finally:
    # Whatever stopped the run, the host does not outlive it.
    stop.set()
    for t in threads:
        t.join()
    host.send_signal(signal.SIGTERM)
    host.wait(timeout=60)
    shutil.rmtree(tmp, ignore_errors=True)

def third(key, part):
    n = len(rows) // 3 or 1
    chunk = rows[n * part: n * (part + 1)] or rows
    return sum(r[key] for r in chunk) / len(chunk)

lines = [
    "## Soak",
    "",
    f"Written by `bench/soak.sh` on {time.strftime('%Y-%m-%d')}: {args.seconds} s of mixed load on one host",
    f"(wrk at 8 connections on a wasi:http hello, {counts['async']} async submissions, a timer every",
    f"second, {counts['files']} files dropped into a watched folder; {counts['errors']} submissions failed).",
    "Records are kept for a minute (`retention = \"1m\"`) so that pruning, every minute, shows",
    "the store's steady state within the run; SQLite reuses the pages it frees.",
    "",
    "| s | RSS MiB | of it anonymous | open fds | store MB | queue | sync p99 ms | sync req/s | slowest submission ms |",
    "|---|---|---|---|---|---|---|---|---|",
]
for r in rows:
    lines.append(f"| {r['t']} | {r['rss']} | {r['anon']} | {r['fds']} | {r['store']:.1f} | {r['queue']} | {r['p99']:.2f} | {r['rps']:.0f} | {r['submit']:.0f} |")
lines += [
    "",
    "Middle third against last third: "
    + ", ".join(f"{k} {third(k, 1):.1f} -> {third(k, 2):.1f}" for k in ("rss", "anon", "fds", "store", "p99", "submit")),
    "",
]
print("\n".join(lines))
if os.environ.get("JOBHOST"):
    sys.exit(0)
path = REPO / "BENCHMARKS.md"
text = path.read_text() if path.exists() else "# Benchmarks\n"
if "## Soak" in text:
    start = text.index("## Soak")
    rest = text[start + len("## Soak"):]
    end = rest.find("\n## ")
    text = text[:start] + (rest[end + 1:] if end >= 0 else "")
path.write_text(text.rstrip() + "\n\n" + "\n".join(lines))
PY
