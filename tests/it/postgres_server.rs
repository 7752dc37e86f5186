//! A real PostgreSQL server for tests, from Debian's `postgresql` package: `initdb` into a
//! temp folder (as the unprivileged `postgres` user when the tests run as root), a free
//! port on loopback, no sockets elsewhere. One server per test process, started on first
//! use and stopped when the process ends (the kernel signals it: `setpriv --pdeathsig`);
//! each test gets a database of its own on it. Folders left by a killed test process are
//! removed by the next one.
//!
//! Shared by the store's unit tests and the integration tests (the unit tests include this
//! file by path), so it uses nothing but std.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

/// A running server.
pub struct Server {
    bin: PathBuf,
    pub port: u16,
    dir: PathBuf,
    /// The user the server runs as, when it is not this process's.
    user: Option<String>,
    /// With TLS: the certificate of the CA that signed the server's (for 127.0.0.1).
    pub ca: Option<PathBuf>,
}

/// The URL of a new, empty database on this process's server, started on first use.
pub fn database() -> String {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(Server::start).database()
}

impl Server {
    /// Starts a server of its own (a test that stops and starts it uses one).
    pub fn start() -> Server {
        Server::start_with(false)
    }

    /// Starts a server that also speaks TLS, with a certificate for 127.0.0.1 signed by a
    /// CA of its own (`ca`), made with `openssl`.
    pub fn start_tls() -> Server {
        Server::start_with(true)
    }

    fn start_with(tls: bool) -> Server {
        let bin = bindir();
        let user = running_as_root().then(|| "postgres".to_string());
        remove_stale_folders();
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "jobhost-pg-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let data = dir.join("data");
        std::fs::create_dir_all(&data).expect("a folder for the test PostgreSQL server");
        if let Some(user) = &user {
            run(Command::new("chown").arg(format!("{user}:")).arg(&data));
        }
        let mut initdb = as_user(&user);
        initdb.arg(bin.join("initdb")).arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        run(&mut initdb);
        let ca = tls.then(|| certificates(&dir.join("tls"), &user));
        let server = Server {
            bin,
            port: free_port(),
            dir,
            user,
            ca,
        };
        server.run_postgres();
        server
    }

    /// A new, empty database on this server; its URL.
    pub fn database(&self) -> String {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!("test_{}", NEXT.fetch_add(1, Ordering::Relaxed));
        self.psql(&format!("CREATE DATABASE {name}"));
        self.url(&name)
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Runs SQL as the superuser in the `postgres` database; panics with psql's error.
    pub fn psql(&self, sql: &str) -> String {
        execute(&self.url("postgres"), sql)
    }

    /// Stops the server (fast shutdown: clients are cut off, what was committed is kept).
    pub fn stop(&self) {
        let mut stop = as_user(&self.user);
        stop.arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "fast", "-w", "stop"]);
        run(&mut stop);
    }

    /// Starts a stopped server again on the same port and data.
    pub fn restart(&self) {
        self.run_postgres();
    }

    fn run_postgres(&self) {
        let log = self.dir.join("postgres.log");
        let mut postgres = as_user(&self.user);
        postgres
            .args(["--pdeathsig", "INT", "--"])
            .arg(self.bin.join("postgres"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-h", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            // Tests lose nothing to an operating-system crash; they need speed.
            .args(["-c", "unix_socket_directories=", "-c", "fsync=off"])
            .args(["-c", "max_connections=300"]);
        if self.ca.is_some() {
            let tls = self.dir.join("tls");
            postgres.args(["-c", "ssl=on", "-c"]).arg(format!(
                "ssl_cert_file={}",
                tls.join("server.crt").display()
            ));
            postgres
                .arg("-c")
                .arg(format!("ssl_key_file={}", tls.join("server.key").display()));
        }
        postgres
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("the server's log file"));
        keep(postgres);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = Command::new(self.bin.join("psql"))
                .args([
                    "-X",
                    "-q",
                    "-h",
                    "127.0.0.1",
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                ])
                .arg("-p")
                .arg(self.port.to_string())
                .args(["-c", "SELECT 1"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the test PostgreSQL server did not start within 60s; its log ({}):\n{}",
                log.display(),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A CA and a server certificate for 127.0.0.1 in `dir` (`ca.pem`, `server.crt`,
/// `server.key`); returns the CA's certificate.
pub fn certificates(dir: &Path, user: &Option<String>) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let openssl = |args: &[&str]| {
        run(Command::new("openssl").current_dir(dir).args(args));
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=jobhost test CA",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
    // PostgreSQL reads its key only if no one else can.
    run(Command::new("chmod").arg("600").arg(dir.join("server.key")));
    if let Some(user) = user {
        run(Command::new("chown")
            .arg("-R")
            .arg(format!("{user}:"))
            .arg(dir));
    }
    dir.join("ca.pem")
}

/// Runs SQL on the database at `url` (any server); panics with psql's error.
pub fn execute(url: &str, sql: &str) -> String {
    let out = Command::new(bindir().join("psql"))
        .args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            url,
            "-c",
            sql,
        ])
        .output()
        .expect("running psql");
    assert!(
        out.status.success(),
        "psql -c {sql:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Where the server's programs are: `JOBHOST_TEST_PG_BIN`, or the newest of Debian's
/// `/usr/lib/postgresql/N/bin`, or the PATH.
fn bindir() -> PathBuf {
    if let Some(dir) = std::env::var_os("JOBHOST_TEST_PG_BIN") {
        return dir.into();
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").is_file().then_some((version, bin))
        })
        .collect();
    found.sort();
    if let Some((_, bin)) = found.pop() {
        return bin;
    }
    let on_path = Command::new("sh")
        .args(["-c", "command -v postgres"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    match on_path.as_deref().and_then(Path::parent) {
        Some(dir) if dir.join("initdb").is_file() => dir.to_path_buf(),
        _ => panic!(
            "these tests need a PostgreSQL server and none was found: install Debian's package \
             (apt-get install postgresql; .ci/run does it), or set JOBHOST_TEST_PG_BIN to the \
             folder that holds postgres and initdb"
        ),
    }
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// A command run through `setpriv`, as `user` when given (PostgreSQL refuses to run as
/// root).
fn as_user(user: &Option<String>) -> Command {
    let mut cmd = Command::new("setpriv");
    if let Some(user) = user {
        cmd.args(["--reuid", user, "--regid", user, "--init-groups"]);
    }
    cmd
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Starts `cmd` from a thread that lives as long as the process: `--pdeathsig` signals the
/// child when the thread that started it ends, and a test's own thread ends with the test.
fn keep(cmd: Command) {
    type Request = (Command, mpsc::Sender<std::io::Result<()>>);
    static KEEPER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    let keeper = KEEPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::spawn(move || {
            let mut children: Vec<Child> = Vec::new();
            for (mut cmd, answer) in rx {
                children.retain_mut(|c| c.try_wait().is_ok_and(|s| s.is_none()));
                let _ = answer.send(cmd.spawn().map(|c| children.push(c)));
            }
            // The sender lives in a static: this loop never ends, so the thread never does.
        });
        Mutex::new(tx)
    });
    let (answer, spawned) = mpsc::channel();
    keeper
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, answer))
        .expect("the keeper thread is alive");
    spawned
        .recv()
        .expect("the keeper thread answers")
        .expect("starting postgres");
}

/// Removes the folders of servers whose test process is gone.
fn remove_stale_folders() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("jobhost-pg-")) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or_default();
        if !pid.is_empty() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
