#!/usr/bin/env python3
"""Durable jobs per second, end to end: N background jobs submitted over HTTP
(`POST /_jobhost/functions/f/invoke`, a trivial guest) and drained, on SQLite with one
host and on PostgreSQL with 1, 2 and 3 hosts on this machine; and how long the hosts'
claims took (`jobhost_claim_seconds`, p99) while about 1,000 jobs waited.

    bench/durable.py [--jobs 5000] [--clients 8]

Writes its table into BENCHMARKS.md (replacing its section).

PostgreSQL comes from Debian's `postgresql` package (.ci/run installs it): a throwaway
server in a temp folder on a free port, with `synchronous_commit = off`, the same
durability class as the SQLite store's `synchronous = NORMAL` (a process crash loses
nothing committed; an operating-system crash may lose the last commits).
"""

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from jobhost_host import REPO, Host, free_port, write_section

GUEST = os.path.join(REPO, "target", "bench-guests", "cgi-command.wasm")


def build():
    subprocess.run(["cargo", "build", "--quiet", "--release"], cwd=REPO, check=True)
    subprocess.run(["./run", "build", "target/bench-guests"], cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL)


class Postgres:
    """A throwaway server: initdb into a temp folder (as `postgres` when run as root)."""

    def __init__(self):
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                      key=lambda p: int(p.split("/")[-2]))
        if not bins:
            sys.exit("no PostgreSQL server: apt-get install postgresql")
        self.bin = bins[-1]
        self.dir = tempfile.mkdtemp(prefix="jobhost-bench-pg-")
        self.data = os.path.join(self.dir, "data")
        os.mkdir(self.data)
        self.user = ["setpriv", "--reuid", "postgres", "--regid", "postgres",
                     "--init-groups"] if os.geteuid() == 0 else []
        if self.user:
            shutil.chown(self.dir, "postgres")
            shutil.chown(self.data, "postgres")
        subprocess.run(self.user + [f"{self.bin}/initdb", "-D", self.data, "-U", "postgres",
                                    "-A", "trust", "-E", "UTF8", "--no-sync"],
                       check=True, stdout=subprocess.DEVNULL)
        self.port = free_port()
        cmd = (self.user or ["setpriv"]) + ["--pdeathsig", "INT", "--", f"{self.bin}/postgres",
                                            "-D", self.data, "-h", "127.0.0.1",
                                            "-p", str(self.port),
                                            "-c", "unix_socket_directories=",
                                            "-c", "synchronous_commit=off",
                                            "-c", "max_connections=300"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                     stderr=open(os.path.join(self.dir, "log"), "w"))
        deadline = time.time() + 60
        while subprocess.run([f"{self.bin}/psql", "-X", "-q", "-h", "127.0.0.1", "-U", "postgres",
                              "-p", str(self.port), "-c", "SELECT 1"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode:
            if time.time() > deadline:
                sys.exit("the PostgreSQL server did not start")
            time.sleep(0.1)
        self.databases = 0

    def database(self):
        self.databases += 1
        name = f"bench_{self.databases}"
        subprocess.run([f"{self.bin}/psql", "-X", "-q", "-h", "127.0.0.1", "-U", "postgres",
                        "-p", str(self.port), "-c", f"CREATE DATABASE {name}"], check=True)
        return f"postgres://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self):
        self.proc.terminate()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def start_host(store):
    """A host on SQLite, or on the PostgreSQL database `store`, serving `f`."""
    store_line = f'store = {{ postgres = "{store}" }}\n' if store else ""
    config = ('[host]\nlisten = "127.0.0.1:{port}"\n' + store_line
              + "[functions.f]\ntriggers = []\n")
    return Host(config, {"f.wasm": GUEST})


def claim_p99(hosts):
    """The upper bound of the bucket holding the 99th percentile of every host's claims."""
    buckets = {}
    for h in hosts:
        for name, value in h.metrics().items():
            if name.startswith("jobhost_claim_seconds_bucket"):
                le = name.split('le="')[1].split('"')[0]
                buckets[le] = buckets.get(le, 0) + value
    bounds = sorted(buckets.items(), key=lambda kv: float("inf") if kv[0] == "+Inf" else float(kv[0]))
    total = bounds[-1][1] if bounds else 0
    for le, count in bounds:
        if total and count >= 0.99 * total:
            return le, int(total)
    return "-", int(total)


def run(store_urls, jobs, clients):
    hosts = [start_host(url) for url in store_urls]
    failures = []
    threads = []
    per = jobs // (len(hosts) * clients)
    started = time.time()
    for h in hosts:
        for _ in range(clients):
            t = threading.Thread(target=h.submit, args=("f", b"x", per, failures))
            t.start()
            threads.append(t)
    for t in threads:
        t.join()
    submitted = time.time() - started
    while True:
        m = [h.metrics() for h in hosts]
        depth = max(x.get("jobhost_queue_depth", 0) for x in m)
        running = sum(x.get("jobhost_running_invocations", 0) for x in m)
        if depth == 0 and running == 0:
            break
        time.sleep(0.02)
    took = time.time() - started
    p99, claims = claim_p99(hosts)
    done = sum(x.get('jobhost_invocations_total{function="f",trigger="manual",outcome="succeeded"}', 0)
               for x in [h.metrics() for h in hosts])
    for h in hosts:
        h.stop()
    return per * len(hosts) * clients, submitted, took, p99, claims, int(done), len(failures)


SECTION = "## Durable jobs end to end"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--jobs", type=int, default=5000)
    p.add_argument("--clients", type=int, default=8, help="submitting connections per host")
    args = p.parse_args()
    build()
    pg = Postgres()
    lines = [
        SECTION,
        "",
        f"Written by `bench/durable.py` on {time.strftime('%Y-%m-%d')}: {args.jobs} background "
        f"jobs of a trivial guest submitted over HTTP by {args.clients} connections per host "
        f"(Python, on the same {os.cpu_count()} cores as the hosts and PostgreSQL), timed from "
        "the first submission until the queue is drained. PostgreSQL runs with "
        "`synchronous_commit = off`, the durability class of the SQLite store's "
        "`synchronous = NORMAL`. The claim p99 is the upper bound of the "
        "`jobhost_claim_seconds` bucket that holds it.",
        "",
        "| store | hosts | jobs/s | submitted in | drained in | claim p99 | claims | ran |",
        "|---|---|---|---|---|---|---|---|",
    ]
    try:
        for label, n in [("SQLite", 1)] + [("PostgreSQL", n) for n in (1, 2, 3)]:
            urls = [None] if label == "SQLite" else [pg.database()] * n
            jobs, submitted, took, p99, claims, done, refused = run(urls, args.jobs, args.clients)
            lines.append(f"| {label} | {n} | {jobs / took:,.0f} | {submitted:.2f} s | {took:.2f} s "
                         f"| ≤ {float(p99) * 1000:.1f} ms | {claims} | {done} |")
            if refused:
                lines.append(f"\n({refused} submissions answered other than 202 and were sent again.)\n")
            print(lines[-1], flush=True)
    finally:
        pg.stop()
    write_section(lines)

if __name__ == "__main__":
    main()
