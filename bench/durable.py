#!/usr/bin/env python3
"""Durable jobs per second, end to end: N background jobs submitted over HTTP
(`POST /_jobhost/functions/f/invoke`, a trivial guest) and drained, on SQLite with one
host and on PostgreSQL with 1, 2 and 3 hosts on this machine; and how long the hosts'
claims took (`jobhost_claim_seconds`, p99) while the queue held them all (the function paused,
then resumed).

    bench/durable.py [--jobs 5000] [--queued 1000] [--rounds 5] [--clients 8] [--connections 4]

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


def connections_each(total, hosts):
    """Each host's share of the cluster's `total` connections to PostgreSQL, at least one."""
    return max(1, total // hosts)


def start_host(store, connections):
    """A host on SQLite, or on the PostgreSQL database `store` through at most
    `connections` connections (besides its listener and its claimer), serving `f`."""
    store_line = (f'store = {{ postgres = "{store}", connections = {connections} }}\n'
                  if store else "")
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


def claim_p99(buckets):
    """The 99th percentile of the claims counted in `buckets` ({le: count}): the upper bound
    of the bucket that holds it, an estimate within that bucket (linear, as Prometheus's
    histogram_quantile), how many claims there were, and the share of them that took at
    most 20 ms (the bucket `le="0.02"`)."""
    bounds = sorted(((float(le), n) for le, n in buckets.items()))
    total = bounds[-1][1] if bounds else 0
    within = buckets.get("0.02", 0) / total if total else float("nan")
    lower, below = 0.0, 0
    for le, count in bounds:
        if total and count >= 0.99 * total:
            if le == float("inf"):
                return le, lower, int(total), within
            share = (0.99 * total - below) / max(count - below, 1)
            return le, lower + (le - lower) * share, int(total), within
        lower, below = le, count
    return float("nan"), float("nan"), int(total), within


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


def run(store_urls, jobs, queued, clients, connections):
    """`jobs` submitted while the hosts take them (each host starts what it has room for as
    it is submitted), then `queued` submitted while `f` is paused and claimed from the queue
    once it is resumed: what each took, what ran, and the claims' buckets."""
    hosts = [start_host(url, connections) for url in store_urls]
    try:
        started = time.time()
        submitted, failures = submit_all(hosts, jobs, clients)
        took_submit = time.time() - started
        drain(hosts)
        took = time.time() - started
        done = succeeded(hosts)
        flowing = {"jobs": submitted, "rate": submitted / took, "submitted_in": took_submit,
                   "drained_in": took, "ran": done, "refused": len(failures)}

        # Claims from a queue: every host paused (each reads the pause afresh within a
        # second), the jobs queued, then resumed.
        for h in hosts:
            post(h, "/_jobhost/functions/f/pause")
        time.sleep(1.2)
        queued, failures = submit_all(hosts, queued, clients)
        before = claim_buckets(hosts)
        started = time.time()
        for h in hosts:
            post(h, "/_jobhost/functions/f/resume")
        drain(hosts)
        took = time.time() - started
        buckets = {le: n - before.get(le, 0) for le, n in claim_buckets(hosts).items()}
        waiting = {"jobs": queued, "rate": queued / took, "drained_in": took,
                   "ran": succeeded(hosts) - done, "refused": len(failures), "buckets": buckets}
        return flowing, waiting
    finally:
        for h in hosts:
            h.stop()


def median(values):
    values = sorted(values)
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2


SECTION = "## Durable jobs end to end"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--jobs", type=int, default=5000)
    p.add_argument("--clients", type=int, default=8, help="submitting connections per host")
    p.add_argument("--queued", type=int, default=1000,
                   help="jobs queued for the claims table (the claim goal is set at 1,000)")
    p.add_argument("--rounds", type=int, default=5,
                   help="interleaved rounds; the table gives each setup's medians")
    p.add_argument("--connections", type=int, default=4,
                   help="the cluster's connections to PostgreSQL, split among its hosts")
    args = p.parse_args()
    build()
    pg = Postgres()
    setups = [("SQLite", 1)] + [("PostgreSQL", n) for n in (1, 2, 3)]
    runs = {setup: [] for setup in setups}
    try:
        # Rounds interleaved, each setup's figures the median over them: runs of one setup
        # spread 10-15% on a shared two-core machine.
        for round in range(args.rounds):
            for label, n in setups:
                urls = [None] if label == "SQLite" else [pg.database()] * n
                each = connections_each(args.connections, n) if label == "PostgreSQL" else None
                runs[(label, n)].append(run(urls, args.jobs, args.queued, args.clients, each))
                flowing, waiting = runs[(label, n)][-1]
                print(f"round {round + 1}: {label} {n}: {flowing['rate']:,.0f} jobs/s flowing, "
                      f"{waiting['rate']:,.0f} from the queue", flush=True)
    finally:
        pg.stop()
    flowing = [
        "| store | hosts | connections each | jobs/s | submitted in | drained in | ran |",
        "|---|---|---|---|---|---|---|",
    ]
    waiting = [
        "| store | hosts | connections each | queued | drained in | jobs/s | claim p99 (bucket) | claim p99 (estimate) | claims | within 20 ms | ran |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    refused = 0
    for (label, n), results in runs.items():
        each = connections_each(args.connections, n) if label == "PostgreSQL" else "-"
        f = [r[0] for r in results]
        w = [r[1] for r in results]
        refused += sum(r["refused"] for r in f + w)
        ran = lambda rs: f"{sum(r['ran'] for r in rs)} of {sum(r['jobs'] for r in rs)}"
        flowing.append(
            f"| {label} | {n} | {each} | {median(r['rate'] for r in f):,.0f} "
            f"| {median(r['submitted_in'] for r in f):.2f} s "
            f"| {median(r['drained_in'] for r in f):.2f} s | {ran(f)} |")
        buckets = {}
        for r in w:
            for le, count in r["buckets"].items():
                buckets[le] = buckets.get(le, 0) + count
        p99, estimate, claims, within = claim_p99(buckets)
        waiting.append(
            f"| {label} | {n} | {each} | {w[0]['jobs']} "
            f"| {median(r['drained_in'] for r in w):.2f} s "
            f"| {median(r['rate'] for r in w):,.0f} | ≤ {p99 * 1000:g} ms "
            f"| {estimate * 1000:.1f} ms | {claims} | {within:.1%} | {ran(w)} |")
    lines = [
        SECTION,
        "",
        f"Written by `bench/durable.py` on {time.strftime('%Y-%m-%d')}, each figure the median "
        f"of {args.rounds} interleaved rounds (\"ran\" and the claims count all of them): "
        f"{args.jobs} background "
        f"jobs of a trivial guest submitted over HTTP by {args.clients} connections per host "
        f"(Python, on the same {os.cpu_count()} cores as the hosts and PostgreSQL), timed from "
        "the first submission until the queue is drained. PostgreSQL runs with "
        "`synchronous_commit = off`, the durability class of the SQLite store's "
        "`synchronous = NORMAL`. "
        f"The cluster opens {args.connections} connections to it for its work, split among "
        "its hosts (`store = { postgres = ..., connections = N }`, at least one each; each "
        "host has its listener and its claimer besides), as the README advises: a few per "
        "database core, not a few per host.",
        "",
        "Submitted while the hosts run them (a host with a free slot stores a submission "
        "already claimed and starts it):",
        "",
        *flowing,
        "",
        f"Claimed from a queue: {args.queued} a round submitted while the function is paused, then "
        "resumed on every host and drained (timed from the resume; a host reads the pause "
        "state afresh within a second). The claim p99 is the upper bound of the "
        "`jobhost_claim_seconds` bucket that holds it and an estimate within that bucket "
        "(linear, as Prometheus's `histogram_quantile`), over every round's claims; \"within "
        "20 ms\" is the share of them in the buckets up to 20 ms.",
        "",
        *waiting,
    ]
    if refused:
        lines += ["", f"({refused} submissions answered other than 202 and were sent again.)"]
    write_section(lines)


if __name__ == "__main__":
    main()
