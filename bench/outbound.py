#!/usr/bin/env python3
"""What a guest's outbound HTTP call and its key-value calls cost, on the embedded SQLite
store:

- outbound: a guest (the test probe, wasm32-wasip2) makes N GETs of a native hyper server
  on loopback one after another (wasi:http outgoing-handler, through the host's pooled
  client), timing each inside the guest; against hyper-util's client doing the same from a
  native program (bench/native_client.rs). Both reuse one kept-alive connection.
- per request: N synchronous HTTP requests to the guest, each making one outbound call,
  against N requests that make none: what one call adds to an invocation.
- key-value: N `set`, `get` and `increment` calls in one invocation (each timed inside the
  guest), and `increment` from 8 invocations at once on one key.

    bench/outbound.py [--calls 2000]

Writes its table into BENCHMARKS.md (replacing its section).
"""

import argparse
import http.client
import os
import subprocess
import threading
import time

from jobhost_host import REPO, Host, free_port, write_section

PROBE = os.path.join(REPO, "target", "guests", "wasm32-wasip2", "release", "probe.wasm")
RELEASE = os.path.join(REPO, "target", "release", "examples")


def build():
    subprocess.run(["cargo", "build", "--quiet", "--release"], cwd=REPO, check=True)
    subprocess.run(["cargo", "build", "--quiet", "--release", "--example", "native-hello",
                    "--example", "native-client"], cwd=REPO, check=True)
    subprocess.run(["cargo", "build", "--quiet", "--release", "--target", "wasm32-wasip2",
                    "--manifest-path", "tests/guests/Cargo.toml", "--target-dir", "target/guests",
                    "-p", "probe"], cwd=REPO, check=True)


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p / 100))]


def post(port, body):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    c.request("POST", "/probe", body=body)
    r = c.getresponse()
    text = r.read().decode()
    if r.status != 200:
        raise SystemExit(f"POST /probe {body[:40]!r}: {r.status} {text}")
    return text


def timings(text):
    """The µs a guest printed, one per line, after its CGI header."""
    return [int(line) for line in text.split("\n\n", 1)[-1].split() if line.isdigit()]


def requests(port, body, n):
    """`n` sequential requests on one connection; each one's time in µs."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    out = []
    for _ in range(n):
        started = time.perf_counter()
        c.request("POST", "/probe", body=body)
        r = c.getresponse()
        r.read()
        out.append((time.perf_counter() - started) * 1e6)
    return out


CONFIG = """
[host]
listen = "127.0.0.1:{port}"
[defaults]
timeout = "120s"
[functions.probe]
triggers = [{ http = "/probe" }]
allowed_outbound_hosts = ["http://127.0.0.1:SERVER"]
key_value_stores = ["default"]
"""


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    n = args.calls
    build()
    server_port = free_port()
    server = subprocess.Popen([os.path.join(RELEASE, "native-hello"), f"127.0.0.1:{server_port}"],
                              stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{server_port}/"
    time.sleep(0.5)
    host = Host(CONFIG.replace("SERVER", str(server_port)), {"probe.wasm": PROBE})
    try:
        warm = 50
        native = subprocess.run([os.path.join(RELEASE, "native-client"), url, str(n + warm)],
                                check=True, capture_output=True, text=True).stdout
        native = [int(x) for x in native.split()][warm:]
        guest = timings(post(host.port, f"fetchn {n + warm} {url}"))[warm:]
        plain = requests(host.port, "echo x", n // 4 + warm)[warm:]
        calling = requests(host.port, f"fetch GET {url}", n // 4 + warm)[warm:]

        kv = {}
        for op in ["set", "get", "inc"]:
            took = timings(post(host.port, f"kvbench {op} {n}"))
            kv[op] = (len(took) / (sum(took) / 1e6), percentile(took, 50), percentile(took, 99))
        clients, each = 8, n // 8
        started = time.perf_counter()
        threads = [threading.Thread(target=post, args=(host.port, f"kvbench inc {each}"))
                   for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        concurrent = clients * each / (time.perf_counter() - started)
        final = host.get("/_jobhost/kv/default/counter")[1]
    finally:
        host.stop()
        server.terminate()

    def row(name, values):
        return f"| {name} | {percentile(values, 50):.0f} µs | {percentile(values, 99):.0f} µs |"

    lines = [
        "## Outbound HTTP and key-value",
        "",
        f"`bench/outbound.py --calls {n}` on {os.cpu_count()} cores, the embedded SQLite store, a",
        "native hyper server on loopback (`bench/native_hello.rs`) as the far end. Outbound",
        "times are per GET, one kept-alive connection, timed where the call is made:",
        "",
        "| outbound GET | p50 | p99 |",
        "|---|---|---|",
        row("native hyper-util client (`bench/native_client.rs`)", native),
        row("a guest's wasi:http call through jobhost", guest),
        "",
        "What one outbound call adds to a synchronous invocation (client to jobhost and back):",
        "",
        "| request to the guest | p50 | p99 |",
        "|---|---|---|",
        row("no outbound call", plain),
        row("one outbound GET", calling),
        "",
        "Key-value calls from one invocation, each timed in the guest (100 keys):",
        "",
        "| wasi:keyvalue | ops/s | p50 | p99 |",
        "|---|---|---|---|",
    ]
    for op, name in [("set", "`set`"), ("get", "`get`"), ("inc", "`increment`")]:
        rate, p50, p99 = kv[op]
        lines.append(f"| {name} | {rate:,.0f} | {p50} µs | {p99} µs |")
    lines += [
        "",
        f"`increment` of one key from {clients} invocations at once: {concurrent:,.0f} ops/s "
        f"(the key ended at {final}: {n} + {clients * each}, none lost).",
    ]
    write_section(lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
