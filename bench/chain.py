#!/usr/bin/env python3
"""What a chained step and a guest's enqueue cost, against a fresh submission over HTTP,
on the embedded SQLite store:

- fresh: N background jobs of a trivial guest submitted over HTTP
  (`POST /_jobhost/functions/f/invoke`) and drained;
- chain: N/2 submissions of `a`, whose `on_success = ["b"]` queues a step of the same
  trivial guest with the stdout of `a`: N invocations in all, half of them chained;
- enqueue: N/100 submissions of a guest that enqueues 100 children each
  (`jobhost:job` `enqueue`, p1), the children drained too; the rate of enqueues is the
  children over the time until every parent had finished.

    bench/chain.py [--jobs 4000] [--clients 8]

Writes its table into BENCHMARKS.md (replacing its section).
"""

import argparse
import http.client
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JOBHOST = os.path.join(REPO, "target", "release", "jobhost")
GUESTS = os.path.join(REPO, "target", "bench-guests")
TRIVIAL = os.path.join(GUESTS, "cgi-command.wasm")
PROBE = os.path.join(REPO, "target", "guests", "wasm32-wasip1", "release", "probe.wasm")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build():
    subprocess.run(["cargo", "build", "--quiet", "--release"], cwd=REPO, check=True)
    subprocess.run(["./run", "build", GUESTS], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    # Where the tests build it too.
    subprocess.run(["cargo", "build", "--quiet", "--release", "--target", "wasm32-wasip1",
                    "--manifest-path", "tests/guests/Cargo.toml", "--target-dir", "target/guests",
                    "-p", "probe"], cwd=REPO, check=True)


CONFIG = """
[host]
listen = "127.0.0.1:{port}"
[defaults]
timeout = "60s"
[functions.f]
triggers = []
[functions.a]
module = "f.wasm"
triggers = []
on_success = ["b"]
[functions.b]
module = "f.wasm"
triggers = []
[functions.spawner]
module = "probe.wasm"
triggers = []
"""


class Host:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="jobhost-bench-")
        os.mkdir(os.path.join(self.dir, "functions"))
        shutil.copy(TRIVIAL, os.path.join(self.dir, "functions", "f.wasm"))
        shutil.copy(PROBE, os.path.join(self.dir, "functions", "probe.wasm"))
        self.port = free_port()
        with open(os.path.join(self.dir, "runtime.toml"), "w") as f:
            f.write(CONFIG.format(port=self.port))
        self.proc = subprocess.Popen([JOBHOST, "up"], cwd=self.dir, stdout=subprocess.DEVNULL,
                                     stderr=open(os.path.join(self.dir, "log"), "w"),
                                     env={**os.environ, "JOBHOST_LOG": "warn"})
        deadline = time.time() + 60
        while True:
            try:
                if self.get("/healthz")[0] == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline:
                sys.exit(f"jobhost did not start: {open(os.path.join(self.dir, 'log')).read()}")
            time.sleep(0.05)

    def get(self, path):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read().decode()

    def metrics(self):
        out = {}
        for line in self.get("/metrics")[1].splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def succeeded(self, function, trigger):
        key = f'jobhost_invocations_total{{function="{function}",trigger="{trigger}",outcome="succeeded"}}'
        return self.metrics().get(key, 0)

    def drained(self):
        m = self.metrics()
        return m.get("jobhost_queue_depth", 0) == 0 and m.get("jobhost_running_invocations", 0) == 0

    def stop(self):
        self.proc.terminate()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def submit(host, function, body, n):
    c = http.client.HTTPConnection("127.0.0.1", host.port, timeout=30)
    for _ in range(n):
        while True:
            c.request("POST", f"/_jobhost/functions/{function}/invoke", body=body)
            r = c.getresponse()
            r.read()
            if r.status == 202:
                break
            time.sleep(0.01)


def flood(host, function, body, n, clients):
    threads = [threading.Thread(target=submit, args=(host, function, body, n // clients))
               for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def wait(predicate):
    while not predicate():
        time.sleep(0.02)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--jobs", type=int, default=4000)
    p.add_argument("--clients", type=int, default=8)
    args = p.parse_args()
    n, clients = args.jobs, args.clients
    build()
    rows = []

    host = Host()
    started = time.time()
    flood(host, "f", b"x", n, clients)
    wait(host.drained)
    fresh = time.time() - started
    rows.append(("fresh submissions over HTTP", n, fresh, f"{n / fresh:,.0f} invocations/s",
                 f"{fresh / n * 1e6:,.0f} µs"))
    host.stop()

    host = Host()
    started = time.time()
    flood(host, "a", b"x", n // 2, clients)
    wait(lambda: host.succeeded("b", "chain") >= n // 2 and host.drained())
    chained = time.time() - started
    rows.append(("a → b: half submitted, half chained", n, chained,
                 f"{n / chained:,.0f} invocations/s", f"{chained / n * 1e6:,.0f} µs"))
    host.stop()

    host = Host()
    parents = max(n // 100, clients)
    started = time.time()
    flood(host, "spawner", b"spawn 100 f x", parents, clients)
    wait(lambda: host.succeeded("spawner", "manual") >= parents)
    enqueued = time.time() - started
    wait(lambda: host.succeeded("f", "chain") >= parents * 100 and host.drained())
    drained = time.time() - started
    rows.append((f"{parents} guests enqueue 100 children each", parents * 100, drained,
                 f"{parents * 100 / enqueued:,.0f} enqueues/s", f"{drained / (parents * 101) * 1e6:,.0f} µs"))
    host.stop()

    section = "## Chains and enqueues from guests"
    lines = [
        section,
        "",
        f"Written by `bench/chain.py` on {time.strftime('%Y-%m-%d')}, SQLite store, trivial "
        f"guests (examples/cgi-command; the enqueuing parent is tests/guests/probe, p1), "
        f"{clients} submitting connections (Python, on the same {os.cpu_count()} cores), timed "
        "from the first submission until the queue is drained. The cost per invocation is "
        "the wall time over every invocation run (parents included); the goal is that a "
        "chained step costs no more than a fresh submission over HTTP.",
        "",
        "| work | invocations | drained in | rate | per invocation |",
        "|---|---|---|---|---|",
    ]
    for what, count, took, rate, each in rows:
        lines.append(f"| {what} | {count} | {took:.2f} s | {rate} | {each} |")
        print(lines[-1], flush=True)
    path = os.path.join(REPO, "BENCHMARKS.md")
    text = open(path).read()
    rest = ""
    if section in text:
        start = text.index(section)
        end = text.find("\n## ", start + 1)
        rest = text[end:] if end >= 0 else ""
        text = text[:start]
    with open(path, "w") as f:
        f.write(text.rstrip() + "\n\n" + "\n".join(lines) + "\n" + rest)


if __name__ == "__main__":
    main()
