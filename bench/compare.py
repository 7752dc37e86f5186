#!/usr/bin/env python3
"""jobhost's benchmark suite, on one machine and in one run (issue: metrics and benchmarks).

- HTTP hello: the same wasi:http component served by `jobhost up` and by
  `wasmtime serve -Scli` (pooling allocator, the same wasmtime version, installed from the
  crates registry into target/bench-tools), and a native hyper server as the ceiling; each
  loaded by wrk at several concurrency levels: requests/s, p50 and p99.
- Time from dropping a 2 MB module into functions/ to its first answered request.
- Restart time with 100 cached modules.
- Memory per instance with 1,000 invocations sleeping at once.

jobhost runs at its default log level (INFO), as its users run it. Every HTTP row also gives
the server's CPU per request: the process's utime + stime over
the run divided by the requests answered, far steadier than requests/s on a shared machine.

Writes BENCHMARKS.md. Needs wrk (`apt-get install wrk`).
    bench/compare.py [--duration SECONDS] [--rounds N] [--pin] [--skip-wasmtime]

With `--baseline BIN` it measures only this jobhost against another build of it (for
example the binary of the commit before a change), in alternating rounds at 1 and 16
connections, and writes that table into BENCHMARKS.md's "Before and after" section.
    bench/compare.py --baseline /tmp/jobhost-before [--rounds 3] [--duration SECONDS]
"""

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
JOBHOST = REPO / "target" / "release" / "jobhost"
WASMTIME_VERSION = "48.0.8"
TOOLS = REPO / "target" / "bench-tools"
LEVELS = [1, 8, 16, 32, 128]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def sh(*args, **kw):
    return subprocess.run(args, check=True, **kw)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, deadline=60.0):
    end = time.time() + deadline
    while time.time() < end:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except Exception:
            time.sleep(0.02)
    raise RuntimeError(f"{url} never answered")


def build():
    sh("cargo", "build", "--quiet", "--release", cwd=REPO)
    sh("cargo", "build", "--quiet", "--release", "--example", "native-hello", cwd=REPO)
    sh(str(REPO / "run"), "build", str(REPO / "target" / "bench-guests"))
    sh("cargo", "build", "--quiet", "--release", "--manifest-path", "tests/guests/Cargo.toml",
       "--target-dir", "target/guests", "--target", "wasm32-wasip1", "-p", "probe", cwd=REPO)


def wasmtime_bin():
    exe = TOOLS / "bin" / "wasmtime"
    if not exe.exists():
        sh("cargo", "install", "wasmtime-cli", "--version", WASMTIME_VERSION, "--locked",
           "--no-default-features", "--features",
           "serve,run,cranelift,pooling-allocator,parallel-compilation,wasi-config,component-model,component-model-async,wat",
           "--root", str(TOOLS), "--target-dir", str(TOOLS / "build"))
    return exe


def cpu_seconds(pid):
    """utime + stime of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


# `--pin`: the server on one core and wrk on the other, so neither takes the other's cycles.
PIN = {"server": [], "client": []}


def wrk(url, connections, duration, pid=None):
    before = cpu_seconds(pid) if pid else None
    out = subprocess.run(
        PIN["client"] + ["wrk", "-t", "2" if connections > 1 else "1", "-c", str(connections),
                         "-d", f"{duration}s", "--latency", url],
        check=True, capture_output=True, text=True).stdout
    cpu = cpu_seconds(pid) - before if pid else None
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))

    def pct(p):
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
        value, unit = float(m.group(1)), m.group(2)
        return value * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50": pct(50), "p99": pct(99), "non2xx": int(errors.group(1)) if errors else 0,
            "cpu_us": cpu * 1e6 / requests if cpu is not None and requests else None}


class Server:
    def __init__(self, args, url, cwd=None, env=None):
        self.proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        self.url = url
        wait_http(url)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def jobhost_project(tmp, functions, toml=""):
    port = free_port()
    (tmp / "functions").mkdir(parents=True, exist_ok=True)
    for name, src in functions.items():
        shutil.copy(src, tmp / "functions" / f"{name}.wasm")
    (tmp / "runtime.toml").write_text(f'[host]\nlisten = "127.0.0.1:{port}"\n{toml}')
    return port


def http_throughput(duration, skip_wasmtime, rounds):
    """Each server at each level, in `rounds` interleaved rounds (the order of the servers
    turns every round); every figure is the median over the rounds."""
    hello = REPO / "target" / "bench-guests" / "hello.wasm"
    runs = {}
    servers = []
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        # max_concurrency above the highest level, so every request runs (wasmtime serve has
        # no such limit); the default of 64 would answer part of the load with 503.
        port = jobhost_project(tmp, {"hello": hello}, f"max_concurrency = {2 * LEVELS[-1]}\n")
        servers.append(("jobhost", lambda: Server(
            PIN["server"] + [str(JOBHOST), "--config", str(tmp / "runtime.toml"), "up"],
            f"http://127.0.0.1:{port}/hello")))
        if not skip_wasmtime:
            wport = free_port()
            servers.append(("wasmtime serve", lambda: Server(
                PIN["server"] + [str(wasmtime_bin()), "serve", "-Scli", "-O", "pooling-allocator=y",
                                 "--addr", f"127.0.0.1:{wport}", str(hello)],
                f"http://127.0.0.1:{wport}/hello")))
        nport = free_port()
        servers.append(("native hyper", lambda: Server(
            PIN["server"] + [str(REPO / "target/release/examples/native-hello"), f"127.0.0.1:{nport}"],
            f"http://127.0.0.1:{nport}/hello")))
        for round in range(rounds):
            order = servers[round % len(servers):] + servers[:round % len(servers)]
            for name, start in order:
                server = start()
                try:
                    wrk(server.url, 8, 2)  # warm up
                    for c in LEVELS:
                        runs.setdefault(name, {}).setdefault(c, []).append(
                            wrk(server.url, c, duration, server.proc.pid))
                finally:
                    server.stop()
    results = {name: {c: {k: median([r[k] for r in rs]) for k in rs[0]} for c, rs in per.items()}
               for name, per in runs.items()}
    # Keep the table's order: jobhost, wasmtime serve, native hyper.
    return {name: results[name] for name, _ in servers}


def leb(v):
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def big_module(tag=b""):
    """A 2 MB module: the hello component with a custom section appended (distinct per tag)."""
    src = (REPO / "target" / "bench-guests" / "hello.wasm").read_bytes()
    payload = tag + b"\0" * (2 * 1024 * 1024 - len(src) - len(tag))
    name = b"bench-padding"
    body = leb(len(name)) + name + payload
    return src + b"\0" + leb(len(body)) + body


def latency_during_reload(duration=6):
    """p50/p99 of /hello at 8 connections, quiet and while 2 MB modules are dropped in."""
    hello = REPO / "target" / "bench-guests" / "hello.wasm"
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        port = jobhost_project(tmp, {"hello": hello})
        server = Server([str(REPO / "target/release/jobhost"), "--config", str(tmp / "runtime.toml"), "up"],
                        f"http://127.0.0.1:{port}/hello")
        try:
            quiet = wrk(server.url, 8, duration)
            proc = subprocess.Popen(["wrk", "-t", "2", "-c", "8", "-d", f"{duration}s", "--latency", server.url],
                                    stdout=subprocess.PIPE, text=True)
            for i in range(duration - 1):
                time.sleep(1)
                staged = tmp / "big.part"
                staged.write_bytes(big_module(str(i).encode()))
                os.rename(staged, tmp / "functions" / f"big{i}.wasm")
            out = proc.communicate()[0]
        finally:
            server.stop()

    def pct(p):
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]

    return {"quiet": quiet, "reloading": {"p50": pct(50), "p99": pct(99)}, "reloads": duration - 1}


def drop_to_first_answer():
    big = big_module()
    times = []
    for _ in range(5):
        with tempfile.TemporaryDirectory() as t:
            tmp = Path(t)
            port = jobhost_project(tmp, {})
            server = Server([str(REPO / "target/release/jobhost"), "--config", str(tmp / "runtime.toml"), "up"],
                            f"http://127.0.0.1:{port}/healthz")
            try:
                # Written beside and renamed in, so the clock starts with the whole file there.
                staged = tmp / "big.wasm.part"
                staged.write_bytes(big)
                start = time.perf_counter()
                os.rename(staged, tmp / "functions" / "big.wasm")
                while True:
                    try:
                        with urllib.request.urlopen(f"http://127.0.0.1:{port}/big", timeout=1) as r:
                            if r.status == 200:
                                break
                    except Exception:
                        time.sleep(0.002)
                times.append((time.perf_counter() - start) * 1000)
            finally:
                server.stop()
    times.sort()
    return {"size_bytes": len(big), "median_ms": times[len(times) // 2], "max_ms": times[-1]}


def restart_with_cached(n=100):
    src = (REPO / "target" / "bench-guests" / "cgi-command.wasm").read_bytes()
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        port = jobhost_project(tmp, {})
        for i in range(n):
            tag = str(i).encode()
            (tmp / "functions" / f"f{i}.wasm").write_bytes(src + b"\0" + bytes([len(tag) + 2, 1]) + b"b" + tag)
        results = []
        for _ in range(3):
            start = time.perf_counter()
            server = Server([str(REPO / "target/release/jobhost"), "--config", str(tmp / "runtime.toml"), "up"],
                            f"http://127.0.0.1:{port}/healthz")
            results.append((time.perf_counter() - start) * 1000)
            server.stop()
    return {"modules": n, "cold_ms": results[0], "warm_ms": min(results[1:])}


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def sleeping_instances(n=1000):
    probe = REPO / "target" / "guests" / "wasm32-wasip1" / "release" / "probe.wasm"
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        port = jobhost_project(tmp, {"probe": probe},
                               f'max_concurrency = {n + 10}\n[defaults]\ntimeout = "120s"\n')
        server = Server([str(REPO / "target/release/jobhost"), "--config", str(tmp / "runtime.toml"), "up"],
                        f"http://127.0.0.1:{port}/healthz")
        try:
            base = f"http://127.0.0.1:{port}"
            # One run first, so code and caches are warm before the baseline.
            urllib.request.urlopen(urllib.request.Request(f"{base}/probe", data=b"echo warm")).read()
            before = rss_kib(server.proc.pid)
            for _ in range(n):
                urllib.request.urlopen(urllib.request.Request(
                    f"{base}/_jobhost/functions/probe/invoke", data=b"sleep 60000")).read()
            deadline = time.time() + 120
            running = 0
            while time.time() < deadline:
                text = urllib.request.urlopen(f"{base}/metrics").read().decode()
                running = int(float(re.search(r"^jobhost_running_invocations (\S+)", text, re.M).group(1)))
                if running >= n:
                    break
                time.sleep(0.2)
            during = rss_kib(server.proc.pid)
        finally:
            server.proc.kill()
            server.proc.wait()
    # The probe's linear memory as the guest touched it: its data, stack and heap pages.
    return {"instances": running, "rss_before_kib": before, "rss_during_kib": during,
            "per_instance_kib": (during - before) / max(running, 1)}


def machine():
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    return f"{os.cpu_count()} cores ({cpu}), {int(mem) // 1024 // 1024} GiB, Linux {platform.release()}"


BEFORE_AFTER = "## Before and after"


def median(values):
    values = sorted(values)
    return values[len(values) // 2]


def before_and_after(baseline, rounds, duration, levels):
    """This jobhost and `baseline` in alternating rounds, at each of `levels` connections."""
    hello = REPO / "target" / "bench-guests" / "hello.wasm"
    runs = {"before": {c: [] for c in levels}, "after": {c: [] for c in levels}}
    binaries = {"before": Path(baseline).resolve(), "after": JOBHOST}
    for round in range(rounds):
        # Which build goes first flips every round, so a machine growing busier or quieter
        # over the run favours neither.
        order = list(binaries.items())
        for label, binary in order if round % 2 == 0 else reversed(order):
            with tempfile.TemporaryDirectory() as t:
                tmp = Path(t)
                port = jobhost_project(tmp, {"hello": hello}, f"max_concurrency = {2 * levels[-1]}\n")
                server = Server(PIN["server"] + [str(binary), "--config", str(tmp / "runtime.toml"), "up"],
                                f"http://127.0.0.1:{port}/hello")
                try:
                    wrk(server.url, 8, 2)  # warm up
                    for c in levels:
                        runs[label][c].append(wrk(server.url, c, duration, server.proc.pid))
                finally:
                    server.stop()
    lines = [
        BEFORE_AFTER,
        "",
        f"Written by `bench/compare.py --baseline` on {time.strftime('%Y-%m-%d')}: {machine()}.",
        f"The same hello component; medians of {rounds} alternating rounds of {duration} s per level"
        + (", the server pinned to one core and wrk to the other." if PIN["server"] else "."),
        "",
        "| connections | build | requests/s | p99 ms | CPU µs/request |",
        "|---|---|---|---|---|",
    ]
    for c in levels:
        row = {}
        for label in ("before", "after"):
            rs = runs[label][c]
            row[label] = {k: median([r[k] for r in rs]) for k in ("rps", "p99", "cpu_us")}
            r = row[label]
            lines.append(f"| {c} | {label} | {r['rps']:.0f} | {r['p99']:.2f} | {r['cpu_us']:.1f} |")
        rps = row["after"]["rps"] / row["before"]["rps"] - 1
        cpu = row["after"]["cpu_us"] / row["before"]["cpu_us"] - 1
        lines.append(f"| {c} | change | {rps:+.1%} | | {cpu:+.1%} |")
    lines.append("")
    return lines, runs


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--skip-wasmtime", action="store_true")
    parser.add_argument("--baseline", help="another jobhost binary to compare this one with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--levels", default="1,16", help="connections for --baseline, comma-separated")
    parser.add_argument("--pin", action="store_true",
                        help="the server on core 1, wrk on core 0 (steadier on a shared machine)")
    args = parser.parse_args()
    build()
    if args.baseline:
        levels = [int(c) for c in args.levels.split(",")]
        if args.pin:
            PIN.update(server=["taskset", "-c", "1"], client=["taskset", "-c", "0"])
        lines, runs = before_and_after(args.baseline, args.rounds, args.duration, levels)
        path = REPO / "BENCHMARKS.md"
        text = path.read_text() if path.exists() else "# Benchmarks\n"
        # Replaces the section (up to the next one, such as the soak's), or adds it.
        rest = ""
        if BEFORE_AFTER in text:
            start = text.index(BEFORE_AFTER)
            end = text.find("\n## ", start + 1)
            rest = text[end:] if end >= 0 else ""
            text = text[:start]
        path.write_text(text.rstrip() + "\n\n" + "\n".join(lines) + rest)
        print("\n".join(lines))
        print(json.dumps(runs, indent=1), file=sys.stderr)
        return
    if args.pin:
        PIN.update(server=["taskset", "-c", "1"], client=["taskset", "-c", "0"])
    http = http_throughput(args.duration, args.skip_wasmtime, args.rounds)
    drop = drop_to_first_answer()
    restart = restart_with_cached()
    sleeping = sleeping_instances()
    reload = latency_during_reload()
    lines = [
        "# Benchmarks",
        "",
        f"Written by `bench/compare.py` on {time.strftime('%Y-%m-%d')}: {machine()}.",
        f"wrk runs on the same machine as the server, {args.duration} s per level; wasmtime {WASMTIME_VERSION}.",
        f"Medians of {args.rounds} interleaved rounds"
        + (", the server pinned to one core and wrk to the other." if PIN["server"] else "."),
        "",
        "## HTTP hello (the same wasi:http component)",
        "",
        "| concurrency | server | requests/s | p50 ms | p99 ms | CPU µs/request | vs wasmtime serve | vs native |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in LEVELS:
        for name, per in http.items():
            r = per[c]
            vs_w = f"{r['rps'] / http['wasmtime serve'][c]['rps']:.2f}x" if "wasmtime serve" in http else "-"
            vs_n = f"{r['rps'] / http['native hyper'][c]['rps']:.2f}x"
            lines.append(f"| {c} | {name} | {r['rps']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} | "
                         f"{r['cpu_us']:.1f} | {vs_w} | {vs_n} |")
    failed = [f"{name} at {c}: {per[c]['non2xx']}" for name, per in http.items() for c in LEVELS if per[c]["non2xx"]]
    lines += ["", f"Answers other than 2xx: {', '.join(failed) if failed else 'none'}."]
    lines += [
        "",
        "## Lifecycle",
        "",
        "| measure | result |",
        "|---|---|",
        f"| drop a {drop['size_bytes'] / 1e6:.1f} MB module into functions/ to its first answer | median {drop['median_ms']:.0f} ms, max {drop['max_ms']:.0f} ms |",
        f"| start with {restart['modules']} modules, nothing cached | {restart['cold_ms']:.0f} ms to the first answer |",
        f"| start with {restart['modules']} cached modules | {restart['warm_ms']:.0f} ms to the first answer |",
        f"| /hello p50 / p99 at 8 connections, quiet | {reload['quiet']['p50']:.2f} / {reload['quiet']['p99']:.2f} ms |",
        f"| the same while {reload['reloads']} modules of 2 MB compile (one a second) | {reload['reloading']['p50']:.2f} / {reload['reloading']['p99']:.2f} ms |",
        f"| {sleeping['instances']} sleeping invocations (wasip1 probe) | {sleeping['per_instance_kib']:.0f} KiB resident per instance "
        f"(host RSS {sleeping['rss_before_kib'] // 1024} MiB before, {sleeping['rss_during_kib'] // 1024} MiB during; "
        "this includes the guest's own touched linear memory) |",
        "",
    ]
    previous = (REPO / "BENCHMARKS.md").read_text() if (REPO / "BENCHMARKS.md").exists() else ""
    if BEFORE_AFTER in previous:
        # The before/after table is written by --baseline runs; keep the last one.
        lines += [previous[previous.index(BEFORE_AFTER):].rstrip(), ""]
    (REPO / "BENCHMARKS.md").write_text("\n".join(lines))
    print("\n".join(lines))
    print(json.dumps({"http": http, "drop": drop, "restart": restart, "sleeping": sleeping, "reload": reload},
                     indent=1), file=sys.stderr)


if __name__ == "__main__":
    main()
