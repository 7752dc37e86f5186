#!/usr/bin/env python3
"""The dashboard's API calls with 100,000 records in the store: every call the page makes
(overview, functions, the invocation list with each filter and a cursor, one invocation),
timed from a client on loopback, on SQLite and on PostgreSQL.

    bench/dashboard.py [--records 100000] [--repeat 30] [--no-postgres]

The store is filled through the host as users fill it: synchronous HTTP requests (most of
the records) and background jobs through the API's invoke, of which one in ten exits with
an error and ends dead. Writes its table into BENCHMARKS.md (replacing its section).
"""

import argparse
import http.client
import json
import os
import statistics
import subprocess
import threading
import time

from durable import Postgres
from jobhost_host import REPO, Host, write_section

PROBE = os.path.join(REPO, "target", "guests", "wasm32-wasip1", "release", "probe.wasm")


def build():
    subprocess.run(["cargo", "build", "--quiet", "--release"], cwd=REPO, check=True)
    subprocess.run(["cargo", "build", "--quiet", "--release", "--target", "wasm32-wasip1",
                    "--manifest-path", "tests/guests/Cargo.toml", "--target-dir", "target/guests"],
                   cwd=REPO, check=True)


def start_host(store):
    store_line = f'store = {{ postgres = "{store}" }}\n' if store else ""
    config = ('[host]\nlisten = "127.0.0.1:{port}"\n' + store_line
              + '[functions.job]\nmodule = "probe.wasm"\ntriggers = [{ http = "/job" }]\n'
              + "retry = { attempts = 1 }\n")
    return Host(config, {"probe.wasm": PROBE})


def fill(host, records, clients=8):
    """`records` records: 80% sync HTTP, 20% background (a tenth of those dead)."""
    per = records // clients

    def client(k):
        c = http.client.HTTPConnection("127.0.0.1", host.port, timeout=60)
        for i in range(per):
            if i % 5 == 4:
                body = b"exit 3" if i % 50 == 49 else b"echo background"
                path = "/_jobhost/functions/job/invoke"
            else:
                body, path = b"echo hello", "/job"
            while True:
                c.request("POST", path, body=body)
                r = c.getresponse()
                r.read()
                if r.status in (200, 202):
                    break
                time.sleep(0.01)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    while True:
        m = host.metrics()
        if m.get("jobhost_queue_depth", 0) == 0 and m.get("jobhost_running_invocations", 0) == 0:
            break
        time.sleep(0.1)
    return per * clients


def timed(conn, path, repeat):
    """Each call's time in ms, and the last answer."""
    times = []
    body = None
    for _ in range(repeat):
        started = time.perf_counter()
        conn.request("GET", path)
        r = conn.getresponse()
        body = r.read()
        times.append((time.perf_counter() - started) * 1000)
        if r.status != 200:
            raise SystemExit(f"{path}: {r.status} {body[:200]!r}")
    return times, body


def measure(host, repeat):
    c = http.client.HTTPConnection("127.0.0.1", host.port, timeout=60)
    stats = json.loads(host.get("/_jobhost/stats")[1])
    page = json.loads(host.get("/_jobhost/invocations?limit=1000")[1])
    middle = page[-1]["id"]
    dead = json.loads(host.get("/_jobhost/invocations?state=dead&limit=1")[1])[0]["id"]
    calls = [
        ("overview", "/_jobhost/stats?minutes=60"),
        ("overview", "/_jobhost/hosts"),
        ("functions", "/_jobhost/functions"),
        ("invocations", "/_jobhost/invocations?limit=51"),
        ("invocations", "/_jobhost/invocations?function=job&limit=51"),
        ("invocations", "/_jobhost/invocations?state=dead&limit=51"),
        ("invocations", "/_jobhost/invocations?trigger=timer&limit=51"),
        ("invocations", "/_jobhost/invocations?error=exit&limit=51"),
        ("invocations", "/_jobhost/invocations?error=no+such+text&limit=51"),
        ("invocations", f"/_jobhost/invocations?before={middle}&limit=51"),
        ("invocations", f"/_jobhost/invocations?function=job&state=dead&before={middle}&limit=51"),
        ("invocation", f"/_jobhost/invocations/{dead}"),
    ]
    rows = []
    for page_name, path in calls:
        times, _ = timed(c, path, repeat)
        times.sort()
        shown = path.replace("/_jobhost/", "").replace(middle, "ID").replace(dead, "ID")
        rows.append((page_name, shown, statistics.median(times),
                     times[int(len(times) * 0.95) - 1], times[-1]))
    return stats, rows


def wait_for_autovacuum(pg, url, within=600):
    database = url.rsplit("/", 1)[1]
    deadline = time.time() + within
    while time.time() < deadline:
        out = subprocess.run(
            [f"{pg.bin}/psql", "-X", "-At", "-h", "127.0.0.1", "-U", "postgres", "-p", str(pg.port),
             database, "-c", "SELECT last_autovacuum IS NOT NULL AND last_autoanalyze IS NOT NULL "
             "FROM pg_stat_user_tables WHERE relname = 'jobhost_invocations'"],
            capture_output=True, text=True, check=True).stdout.strip()
        if out == "t":
            return
        time.sleep(5)
    raise SystemExit("autovacuum did not visit jobhost_invocations")


SECTION = "## Dashboard API with 100,000 records"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--records", type=int, default=100_000)
    p.add_argument("--repeat", type=int, default=30)
    p.add_argument("--no-postgres", action="store_true")
    args = p.parse_args()
    build()
    stores = [("SQLite", None)]
    pg = None
    if not args.no_postgres:
        pg = Postgres()
        stores.append(("PostgreSQL", pg.database()))
    lines = [
        SECTION,
        "",
        f"Written by `bench/dashboard.py` on {time.strftime('%Y-%m-%d')}: the store filled "
        f"with {args.records:,} records through the host (80% synchronous HTTP, 20% background "
        "jobs, a tenth of those dead), then every API call the dashboard makes, each "
        f"{args.repeat} times in a row from one keep-alive connection on loopback "
        f"({os.cpu_count()} cores). Times in ms, client-side. Goal: every call under 100 ms. "
        "`stats` counts every record by state and the hour's ends per minute; here all "
        f"{args.records:,} ended within the hour, its worst case.",
        "",
        "| store | page | call | median | p95 | max |",
        "|---|---|---|---|---|---|",
    ]
    def table(label, rows):
        for page_name, path, median, p95, worst in rows:
            lines.append(f"| {label} | {page_name} | `{path}` | {median:.1f} | {p95:.1f} | {worst:.1f} |")
            print(lines[-1], flush=True)

    try:
        for label, url in stores:
            host = start_host(url)
            started = time.time()
            n = fill(host, args.records)
            print(f"{label}: {n} records in {time.time() - started:.0f} s", flush=True)
            stats, rows = measure(host, args.repeat)
            print(json.dumps(stats["states"]), flush=True)
            if url:
                # Right after a fast fill PostgreSQL has no statistics of the table yet and
                # may plan badly; autovacuum analyzes it within minutes, as it would have
                # while a real store grew.
                table(f"{label}, just filled", rows)
                wait_for_autovacuum(pg, url)
                table(f"{label}, after autovacuum", measure(host, args.repeat)[1])
            else:
                table(label, rows)
            host.stop()
    finally:
        if pg:
            pg.stop()
    write_section(lines)


if __name__ == "__main__":
    main()
