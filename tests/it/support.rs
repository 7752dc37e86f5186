//! Helpers: build the guests from source once, start the real `jobhost` binary in a temp
//! folder on port 0, talk to it over HTTP, and wait on conditions with deadlines.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub const P2: &str = "wasm32-wasip2";
pub const P1: &str = "wasm32-wasip1";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn guest_target_dir() -> PathBuf {
    repo().join("target").join("guests")
}

/// Installs the wasm targets if the toolchain lacks them (a fresh machine), once.
fn ensure_target(target: &str) {
    let sysroot = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .expect("rustc runs");
    let sysroot = String::from_utf8_lossy(&sysroot.stdout).trim().to_string();
    if Path::new(&sysroot)
        .join("lib/rustlib")
        .join(target)
        .exists()
    {
        return;
    }
    let status = Command::new("rustup")
        .args(["target", "add", target])
        .status()
        .expect("rustup runs");
    assert!(status.success(), "rustup target add {target} failed");
}

/// Builds a guest workspace for `target` once per test run and returns the folder of its
/// `.wasm` files.
fn build(workspace: &str, target: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<Vec<(String, String)>>> = OnceLock::new();
    let built = BUILT.get_or_init(Mutex::default);
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    let key = (workspace.to_string(), target.to_string());
    if !built.contains(&key) {
        ensure_target(target);
        let manifest = repo().join(workspace).join("Cargo.toml");
        let output = Command::new(env!("CARGO"))
            .args(["build", "--release", "--target", target, "--manifest-path"])
            .arg(&manifest)
            .arg("--target-dir")
            .arg(guest_target_dir())
            .output()
            .expect("cargo runs");
        assert!(
            output.status.success(),
            "building {workspace} for {target} failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        built.push(key);
    }
    guest_target_dir().join(target).join("release")
}

/// An example guest, built from `examples/`: `file` is the `.wasm` stem cargo writes
/// (`hello_http` for the library, `cgi-command` for a binary).
pub fn example(file: &str, target: &str) -> PathBuf {
    build("examples", target).join(format!("{file}.wasm"))
}

/// The probe test guest, built from `tests/guests/`.
pub fn probe(target: &str) -> PathBuf {
    build("tests/guests", target).join("probe.wasm")
}

/// The wasi:http test guest, built from `tests/guests/`.
pub fn probe_http() -> PathBuf {
    build("tests/guests", P2).join("probe_http.wasm")
}

/// A core module or component written in WebAssembly text, as binary.
pub fn wat(text: &str) -> Vec<u8> {
    wat::parse_str(text).expect("the test's WAT parses")
}

/// A folder for one host: `runtime.toml`, `functions/`, and whatever a test puts there.
pub struct Project {
    /// Shared with every host started here, so the folder outlives them all.
    pub dir: Arc<tempfile::TempDir>,
}

impl Project {
    /// A project whose `runtime.toml` is `toml` after a `[host]` that listens on port 0.
    pub fn new(toml: &str) -> Project {
        let dir = tempfile::tempdir().expect("a temp folder");
        std::fs::create_dir_all(dir.path().join("functions")).unwrap();
        let project = Project { dir: Arc::new(dir) };
        // Every host listens on port 0; a test that sets its own port-0 address keeps it.
        let toml = if let Some(line) = toml.lines().find(|l| l.trim_start().starts_with("listen")) {
            if line.contains(":0\"") {
                toml.to_string()
            } else {
                toml.replacen(line, "listen = \"127.0.0.1:0\"", 1)
            }
        } else if toml.contains("[host]") {
            toml.replacen("[host]", "[host]\nlisten = \"127.0.0.1:0\"", 1)
        } else {
            format!("[host]\nlisten = \"127.0.0.1:0\"\n{toml}")
        };
        project.write("runtime.toml", toml.as_bytes());
        project
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write(&self, rel: &str, bytes: &[u8]) {
        let path = self.path(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    /// Copies a built guest into `functions/NAME.wasm`.
    pub fn function(&self, name: &str, wasm: &Path) -> &Project {
        std::fs::copy(wasm, self.path(&format!("functions/{name}.wasm")))
            .unwrap_or_else(|e| panic!("copying {}: {e}", wasm.display()));
        self
    }

    /// `jobhost` as the README runs it: in the project's folder, on `./runtime.toml` by
    /// default (no `--config`).
    pub fn jobhost(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_jobhost"));
        cmd.current_dir(self.dir.path()).env("JOBHOST_LOG", "info");
        cmd
    }

    /// Starts `jobhost up` and waits until it listens.
    pub fn start(&self) -> Host {
        self.start_with(|_| {})
    }

    pub fn start_with(&self, setup: impl FnOnce(&mut Command)) -> Host {
        let mut cmd = self.jobhost();
        cmd.arg("up");
        setup(&mut cmd);
        self.spawn(cmd)
    }

    /// Starts `jobhost up` under a wrapper command, such as `prlimit --nofile=48:48 --`.
    pub fn start_under(&self, wrapper: &[&str]) -> Host {
        let mut cmd = Command::new(wrapper[0]);
        cmd.args(&wrapper[1..])
            .arg(env!("CARGO_BIN_EXE_jobhost"))
            .arg("up")
            .current_dir(self.dir.path())
            .env("JOBHOST_LOG", "info");
        self.spawn(cmd)
    }

    fn spawn(&self, mut cmd: Command) -> Host {
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("jobhost starts");
        let log = Arc::new(Mutex::new(Vec::<String>::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let mut host = Host {
            child,
            log,
            addr: String::new(),
            _dir: self.dir.clone(),
        };
        let line = host.wait_for_log("listening on http://", Duration::from_secs(60));
        let addr = line.split("listening on http://").nth(1).unwrap();
        host.addr = addr.split_whitespace().next().unwrap().to_string();
        host
    }
}

/// A running `jobhost up`, killed when dropped.
pub struct Host {
    child: Child,
    pub log: Arc<Mutex<Vec<String>>>,
    pub addr: String,
    /// The project's folder, kept until the host is gone.
    _dir: Arc<tempfile::TempDir>,
}

pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

fn answer(response: ureq::http::Response<ureq::Body>) -> Answer {
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
        .collect();
    let body = response
        .into_body()
        .with_config()
        .limit(1 << 30)
        .read_to_string()
        .unwrap_or_default();
    Answer {
        status,
        headers,
        body,
    }
}

impl Host {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn request(&self, method: &str, path: &str, body: &[u8]) -> Answer {
        self.request_with(method, path, body, &[])
    }

    pub fn request_with(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut request = ureq::http::Request::builder()
            .method(method)
            .uri(self.url(path));
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        answer(
            agent()
                .run(request.body(body.to_vec()).unwrap())
                .expect("the host answers"),
        )
    }

    /// A request whose connection may fail (`None`): the host may close it early.
    pub fn try_request(&self, method: &str, path: &str, body: &[u8]) -> Option<Answer> {
        let request = ureq::http::Request::builder()
            .method(method)
            .uri(self.url(path))
            .body(body.to_vec())
            .unwrap();
        agent().run(request).ok().map(answer)
    }

    /// Whether the host accepts connections.
    pub fn listening(&self) -> bool {
        std::net::TcpStream::connect(&self.addr).is_ok()
    }

    pub fn get(&self, path: &str) -> Answer {
        self.request("GET", path, b"")
    }

    pub fn post(&self, path: &str, body: &str) -> Answer {
        self.request("POST", path, body.as_bytes())
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Waits for a log line containing `needle` and returns it.
    pub fn wait_for_log(&mut self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(line) = self.log().into_iter().find(|l| l.contains(needle)) {
                return line;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "jobhost exited with {status} before logging {needle:?}:\n{}",
                    self.log().join("\n")
                );
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {needle:?} within {within:?}:\n{}",
                self.log().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The value of the `/metrics` sample named exactly `name` (labels included), if any.
    pub fn metric(&self, name: &str) -> Option<f64> {
        metric(&self.get("/metrics").body, name)
    }

    /// Waits until the `/metrics` sample `name` is `value`.
    pub fn wait_for_metric(&self, name: &str, value: f64) {
        wait_until(Duration::from_secs(20), || {
            (self.metric(name) == Some(value)).then_some(())
        });
    }

    /// GET a JSON resource.
    pub fn json(&self, path: &str) -> serde_json::Value {
        let answer = self.get(path);
        serde_json::from_str(&answer.body).unwrap_or_else(|e| {
            panic!(
                "GET {path} answered {} with no JSON ({e}): {}",
                answer.status, answer.body
            )
        })
    }

    /// Queues a manual invocation through the API and returns its id.
    pub fn invoke(&self, function: &str, payload: &str) -> String {
        let answer = self.post(&format!("/_jobhost/functions/{function}/invoke"), payload);
        assert_eq!(answer.status, 202, "{}", answer.body);
        answer
            .header("x-jobhost-invocation-id")
            .unwrap()
            .to_string()
    }

    /// Waits until the invocation's record satisfies `done` and returns it.
    pub fn wait_for_record(
        &self,
        id: &str,
        within: Duration,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        wait_until(within, || {
            let record = self.json(&format!("/_jobhost/invocations/{id}"));
            done(&record).then_some(record)
        })
    }

    /// `kill -9`.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for the exit; returns the status and how long it took.
    pub fn sigterm(self, within: Duration) -> (std::process::ExitStatus, Duration) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        self.sigterm_wait(within)
    }

    /// Waits for the process to exit on its own.
    pub fn wait_exit(self, within: Duration) -> (std::process::ExitStatus, Duration) {
        self.sigterm_wait(within)
    }

    /// Waits for the process to exit after a signal already sent.
    pub fn sigterm_wait(mut self, within: Duration) -> (std::process::ExitStatus, Duration) {
        let started = Instant::now();
        let status = wait_until(within, || self.child.try_wait().unwrap());
        (status, started.elapsed())
    }
}

/// Polls `f` until it returns `Some`, failing after `within`.
pub fn wait_until<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "condition not met within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// The value of the sample named exactly `name` (labels included) in Prometheus text.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// The state field of a record.
pub fn state(record: &serde_json::Value) -> &str {
    record["state"].as_str().unwrap_or_default()
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failed test shows what the host said, so a failure on CI can be read.
        if std::thread::panicking() {
            let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
            eprintln!(
                "--- jobhost log ---\n{}\n--- end of log ---",
                log.join("\n")
            );
        }
    }
}

/// The CPU time a process used so far (user and system), from /proc.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // The kernel counts in clock ticks, 100 a second on Linux.
    ticks as f64 / 100.0
}

/// The file descriptors a process has open, from /proc.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// The resident memory of a process in KiB, from /proc.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// The most resident memory a process has had, in KiB, from /proc.
pub fn peak_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}
