"""A jobhost host for the benchmark scripts: the release binary started with `jobhost up` in
a temp folder of its own, on a free port, with the given runtime.toml and modules."""

import http.client
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JOBHOST = os.path.join(REPO, "target", "release", "jobhost")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Host:
    """`config` is runtime.toml with `{port}` for the listen port; `modules` maps a file name
    in functions/ to the module copied there."""

    def __init__(self, config, modules):
        self.dir = tempfile.mkdtemp(prefix="jobhost-bench-")
        os.mkdir(os.path.join(self.dir, "functions"))
        for name, path in modules.items():
            shutil.copy(path, os.path.join(self.dir, "functions", name))
        self.port = free_port()
        with open(os.path.join(self.dir, "runtime.toml"), "w") as f:
            f.write(config.replace("{port}", str(self.port)))
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

    def submit(self, function, body, n, failures=None):
        """`n` durable invocations of `function`, each sent again until it is accepted."""
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        for _ in range(n):
            while True:
                c.request("POST", f"/_jobhost/functions/{function}/invoke", body=body)
                r = c.getresponse()
                r.read()
                if r.status == 202:
                    break
                if failures is not None:
                    failures.append(r.status)
                time.sleep(0.01)

    def stop(self):
        self.proc.terminate()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def write_section(lines):
    """Puts `lines` (a `## ` heading first) into BENCHMARKS.md, in place of the section of
    that heading."""
    path = os.path.join(REPO, "BENCHMARKS.md")
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    section, rest = lines[0], ""
    if section in text:
        start = text.index(section)
        end = text.find("\n## ", start + 1)
        rest = text[end:] if end >= 0 else ""
        text = text[:start]
    with open(path, "w") as f:
        f.write(text.rstrip() + "\n\n" + "\n".join(lines) + "\n" + rest)
