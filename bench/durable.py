#!/usr/bin/env python3
"""Durable jobs per second, end to end: N background jobs submitted over HTTP
(`POST /_jobhost/functions/f/invoke`, a trivial guest) and drained, on SQLite with one
host and on PostgreSQL with 1, 2 and 3 hosts on this machine; and how long the hosts'
claims took (`jobhost_claim_seconds`, p99) while the queue held them all (the function paused,
then resumed).

    bench/durable.py [--jobs 5000] [--clients 8]

Writes its table into BENCHMARKS.md (replacing its section).

PostgreSQL comes from Debian's `postgresql` package (.ci/run installs it): a throwaway
server in a temp folder on a free port, with `synchronous_commit = off`, the same
durability class as the SQLite store's `synchronous = NORMAL` (a process crash loses
nothing committed; an operating-system crash may lose the last commits).
"""

import argparse
import glob
import http.client
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


CONNECTIONS = None


def start_host(store):
    """A host on SQLite, or on the PostgreSQL database `store` (through `CONNECTIONS`
    connections, when set), serving `f`."""
    pool = f", connections = {CONNECTIONS}" if CONNECTIONS else ""
    store_line = f'store = {{ postgres = "{store}"{pool} }}\n' if store else ""
    config = ('[host]\nlisten = "127.0.0.1:{port}"\n' + store_line
              + "[functions.f]\ntriggers = []\n")
    return Host(config, {"f.wasm": GUEST})


def claim_buckets(hosts):
    """Every host's `jobhost_claim_seconds` buckets, summed: {le: count}."""
    buckets = {}
    for h in hosts:
        for name, value in h.metrics().items():
            if name.startswith("jobhost_claim_seconds_bucket"):
                le = name.split('le="')[1].split('"')[0]
                buckets[le] = buckets.get(le, 0) + value
    return buckets


def claim_p99(hosts, before):
    """The 99th percentile of the hosts' claims since `before` (claim_buckets): the upper
    bound of the bucket that holds it, an estimate within that bucket (linear, as
    Prometheus's histogram_quantile), and how many claims there were."""
    buckets = {le: n - before.get(le, 0) for le, n in claim_buckets(hosts).items()}
    bounds = sorted(((float(le), n) for le, n in buckets.items()))
    total = bounds[-1][1] if bounds else 0
    lower, below = 0.0, 0
    for le, count in bounds:
        if total and count >= 0.99 * total:
            if le == float("inf"):
                return le, lower, int(total)
            share = (0.99 * total - below) / max(count - below, 1)
            return le, lower + (le - lower) * share, int(total)
        lower, below = le, count
    return float("nan"), float("nan"), int(total)


def post(host, path):
    c = http.client.HTTPConnection("127.0.0.1", host.port, timeout=30)
    c.request("POST", path)
    r = c.getresponse()
    r.read()
    if r.status != 200:
        sys.exit(f"POST {path}: {r.status}")


def submit_all(hosts, jobs, clients):
    """`jobs` submissions over `clients` connections per host; how many, and any refusals."""
    failures = []
    threads = []
    per = jobs // (len(hosts) * clients)
    for h in hosts:
        for _ in range(clients):
            t = threading.Thread(target=h.submit, args=("f", b"x", per, failures))
            t.start()
            threads.append(t)
    for t in threads:
        t.join()
    return per * len(hosts) * clients, failures


def drain(hosts):
    while True:
        m = [h.metrics() for h in hosts]
        depth = max(x.get("jobhost_queue_depth", 0) for x in m)
        running = sum(x.get("jobhost_running_invocations", 0) for x in m)
        if depth == 0 and running == 0:
            return
        time.sleep(0.02)


def succeeded(hosts):
    return int(sum(x.get('jobhost_invocations_total{function="f",trigger="manual",outcome="succeeded"}', 0)
                   for x in [h.metrics() for h in hosts]))


def run(store_urls, jobs, clients):
    """Jobs submitted while the hosts take them (each host starts what it has room for as
    it is submitted), then jobs submitted while `f` is paused and claimed from the queue
    once it is resumed."""
    hosts = [start_host(url) for url in store_urls]
    try:
        started = time.time()
        submitted, failures = submit_all(hosts, jobs, clients)
        took_submit = time.time() - started
        drain(hosts)
        took = time.time() - started
        done = succeeded(hosts)
        flowing = (submitted / took, took_submit, took, done, len(failures))

        # Claims from a queue: every host paused (each reads the pause afresh within a
        # second), the jobs queued, then resumed.
        for h in hosts:
            post(h, "/_jobhost/functions/f/pause")
        time.sleep(1.2)
        queued, failures = submit_all(hosts, jobs, clients)
        before = claim_buckets(hosts)
        started = time.time()
        for h in hosts:
            post(h, "/_jobhost/functions/f/resume")
        drain(hosts)
        took = time.time() - started
        p99, estimate, claims = claim_p99(hosts, before)
        waiting = (queued, took, p99, estimate, claims, succeeded(hosts) - done, len(failures))
        return flowing, waiting
    finally:
        for h in hosts:
            h.stop()


SECTION = "## Durable jobs end to end"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--jobs", type=int, default=5000)
    p.add_argument("--clients", type=int, default=8, help="submitting connections per host")
    p.add_argument("--connections", type=int,
                   help="each host's connections to PostgreSQL (default: the host's default)")
    args = p.parse_args()
    global CONNECTIONS
    CONNECTIONS = args.connections
    build()
    pg = Postgres()
    flowing = [
        "| store | hosts | jobs/s | submitted in | drained in | ran |",
        "|---|---|---|---|---|---|",
    ]
    waiting = [
        "| store | hosts | queued | drained in | jobs/s | claim p99 (bucket) | claim p99 (estimate) | claims | ran |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    refused = 0
    try:
        for label, n in [("SQLite", 1)] + [("PostgreSQL", n) for n in (1, 2, 3)]:
            urls = [None] if label == "SQLite" else [pg.database()] * n
            (rate, submitted, took, done, r1), (queued, drained, p99, estimate, claims, ran, r2) = \
                run(urls, args.jobs, args.clients)
            refused += r1 + r2
            flowing.append(f"| {label} | {n} | {rate:,.0f} | {submitted:.2f} s | {took:.2f} s | {done} |")
            waiting.append(f"| {label} | {n} | {queued} | {drained:.2f} s | {queued / drained:,.0f} "
                           f"| ≤ {p99 * 1000:.1f} ms | {estimate * 1000:.1f} ms | {claims} | {ran} |")
            print(flowing[-1], flush=True)
            print(waiting[-1], flush=True)
    finally:
        pg.stop()
    lines = [
        SECTION,
        "",
        f"Written by `bench/durable.py` on {time.strftime('%Y-%m-%d')}: {args.jobs} background "
        f"jobs of a trivial guest submitted over HTTP by {args.clients} connections per host "
        f"(Python, on the same {os.cpu_count()} cores as the hosts and PostgreSQL), timed from "
        "the first submission until the queue is drained. PostgreSQL runs with "
        "`synchronous_commit = off`, the durability class of the SQLite store's "
        "`synchronous = NORMAL`. "
        + (f"Each host opens at most {args.connections} connections to it "
           f"(`store = {{ postgres = ..., connections = {args.connections} }}`)."
           if args.connections else "Each host opens its default number of connections to it."),
        "",
        "Submitted while the hosts run them (a host with a free slot stores a submission "
        "already claimed and starts it):",
        "",
        *flowing,
        "",
        f"Claimed from a queue: the same number submitted while the function is paused, then "
        "resumed on every host and drained (timed from the resume; a host reads the pause "
        "state afresh within a second). The claim p99 is the upper bound of the "
        "`jobhost_claim_seconds` bucket that holds it, and an estimate within that bucket "
        "(linear, as Prometheus's `histogram_quantile`).",
        "",
        *waiting,
    ]
    if refused:
        lines += ["", f"({refused} submissions answered other than 202 and were sent again.)"]
    write_section(lines)


if __name__ == "__main__":
    main()
