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
import os
import subprocess
import threading
import time

from jobhost_host import REPO, Host, write_section

GUESTS = os.path.join(REPO, "target", "bench-guests")
TRIVIAL = os.path.join(GUESTS, "cgi-command.wasm")
PROBE = os.path.join(REPO, "target", "guests", "wasm32-wasip1", "release", "probe.wasm")


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


def start_host():
    return Host(CONFIG, {"f.wasm": TRIVIAL, "probe.wasm": PROBE})


def succeeded(host, function, trigger):
    key = f'jobhost_invocations_total{{function="{function}",trigger="{trigger}",outcome="succeeded"}}'
    return host.metrics().get(key, 0)


def is_drained(host):
    m = host.metrics()
    return m.get("jobhost_queue_depth", 0) == 0 and m.get("jobhost_running_invocations", 0) == 0


def flood(host, function, body, n, clients):
    threads = [threading.Thread(target=host.submit, args=(function, body, n // clients))
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

    host = start_host()
    started = time.time()
    flood(host, "f", b"x", n, clients)
    wait(lambda: is_drained(host))
    fresh = time.time() - started
    rows.append(("fresh submissions over HTTP", n, fresh, f"{n / fresh:,.0f} invocations/s",
                 f"{fresh / n * 1e6:,.0f} µs"))
    host.stop()

    host = start_host()
    started = time.time()
    flood(host, "a", b"x", n // 2, clients)
    wait(lambda: succeeded(host, "b", "chain") >= n // 2 and is_drained(host))
    chained = time.time() - started
    rows.append(("a → b: half submitted, half chained", n, chained,
                 f"{n / chained:,.0f} invocations/s", f"{chained / n * 1e6:,.0f} µs"))
    host.stop()

    host = start_host()
    parents = max(n // 100, clients)
    started = time.time()
    flood(host, "spawner", b"spawn 100 f x", parents, clients)
    wait(lambda: succeeded(host, "spawner", "manual") >= parents)
    enqueued = time.time() - started
    wait(lambda: succeeded(host, "f", "chain") >= parents * 100 and is_drained(host))
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
    write_section(lines)

if __name__ == "__main__":
    main()
