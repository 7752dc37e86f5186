//! The dashboard (`/_jobhost/ui/`) in a real browser: Debian's Chromium, headless, driven
//! through chromedriver (WebDriver) with its network limited to loopback, against a real
//! running host. Set `JOBHOST_SCREENSHOTS=docs/screenshots` to keep a picture of each page.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::elements::Element;
use fantoccini::error::CmdError;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::support::{Host, P1, Project, probe, state, wait_until};

const PATIENCE: Duration = Duration::from_secs(30);

/// The first of these that exists.
fn first(candidates: &[&str]) -> Option<PathBuf> {
    candidates.iter().map(PathBuf::from).find(|p| p.is_file())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Headless Chromium under chromedriver, both stopped when dropped.
struct Browser {
    driver: Child,
    client: Option<Client>,
    runtime: tokio::runtime::Runtime,
    profile: tempfile::TempDir,
}

impl Browser {
    fn start() -> Browser {
        const HOW: &str = "the dashboard's tests drive Debian's Chromium: install it with `apt-get install chromium chromium-driver` (.ci/run does, as root)";
        let driver_path = first(&["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"])
            .unwrap_or_else(|| panic!("no chromedriver: {HOW}"));
        let chromium = first(&["/usr/lib/chromium/chromium", "/usr/bin/chromium"])
            .unwrap_or_else(|| panic!("no chromium: {HOW}"));
        let port = free_port();
        let driver = Command::new(&driver_path)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", driver_path.display()));
        let profile = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut browser = Browser {
            driver,
            client: None,
            runtime,
            profile,
        };
        wait_until(PATIENCE, || {
            std::net::TcpStream::connect(("127.0.0.1", port))
                .is_ok()
                .then_some(())
        });
        let args = [
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-quic".into(),
            "--window-size=1280,900".into(),
            // Only loopback: every other name resolves to nothing, and every other address
            // goes to a proxy that is not there (loopback bypasses proxies).
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1".into(),
            "--proxy-server=http://127.0.0.1:9".into(),
            format!("--user-data-dir={}", browser.profile.path().display()),
        ];
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({ "binary": chromium, "args": args }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let client = browser
            .runtime
            .block_on(async {
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                    .capabilities(capabilities)
                    .connect(&url)
                    .await
            })
            .unwrap_or_else(|e| panic!("chromedriver could not start {}: {e}", chromium.display()));
        browser.client = Some(client);
        browser
    }

    fn client(&self) -> &Client {
        self.client.as_ref().unwrap()
    }

    fn goto(&self, url: &str) {
        self.runtime.block_on(self.client().goto(url)).unwrap();
    }

    /// Runs `script` (a function body) in the page and returns what it returns.
    fn eval(&self, script: &str) -> Value {
        self.runtime
            .block_on(self.client().execute(script, vec![]))
            .unwrap_or_else(|e| panic!("{script}: {e}"))
    }

    /// The text of the first element `css` finds, or `None` while there is none.
    fn text(&self, css: &str) -> Option<String> {
        let script = format!(
            "const e = document.querySelector({}); return e ? e.textContent : null;",
            json!(css)
        );
        self.eval(&script).as_str().map(str::to_string)
    }

    /// The texts of every element `css` finds.
    fn texts(&self, css: &str) -> Vec<String> {
        let script = format!(
            "return [...document.querySelectorAll({})].map(e => e.textContent);",
            json!(css)
        );
        serde_json::from_value(self.eval(&script)).unwrap()
    }

    /// Waits until the element `css` finds has text that `wanted` accepts.
    fn wait_text(&self, css: &str, wanted: impl Fn(&str) -> bool) -> String {
        let mut last = None;
        let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_until(PATIENCE, || {
                last = self.text(css);
                last.clone().filter(|t| wanted(t))
            })
        }));
        found
            .unwrap_or_else(|_| panic!("{css} never showed the text wanted; it last said {last:?}"))
    }

    /// Does `act` to the element `css` finds once it is there (`doing` names it in a
    /// failure).
    fn with_element(
        &self,
        css: &str,
        doing: &str,
        act: impl AsyncFnOnce(Element) -> Result<(), CmdError>,
    ) {
        self.runtime
            .block_on(async {
                let element = self
                    .client()
                    .wait()
                    .at_most(PATIENCE)
                    .for_element(Locator::Css(css))
                    .await?;
                act(element).await
            })
            .unwrap_or_else(|e| panic!("{doing} {css}: {e}"));
    }

    /// Clicks the element `css` finds, as a user would (WebDriver's pointer input).
    fn click(&self, css: &str) {
        self.with_element(css, "clicking", async |e| e.click().await);
    }

    /// Types `text` into the field `css` finds.
    fn type_into(&self, css: &str, text: &str) {
        self.with_element(css, "typing into", async |e| {
            e.clear().await?;
            e.send_keys(text).await
        });
    }

    /// Chooses `value` in the select box `css` finds.
    fn choose(&self, css: &str, value: &str) {
        self.with_element(css, &format!("choosing {value} in"), async |e| {
            e.select_by_value(value).await
        });
    }

    /// Keeps a picture of the page as `NAME.png` in `$JOBHOST_SCREENSHOTS`, when set.
    fn screenshot(&self, name: &str) {
        let Some(dir) = std::env::var_os("JOBHOST_SCREENSHOTS") else {
            return;
        };
        let png = self.runtime.block_on(self.client().screenshot()).unwrap();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let _ = self.runtime.block_on(client.close());
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// A project of probe functions: `[functions.NAME]` sections as given.
fn project(functions: &str) -> Project {
    let project = Project::new(functions);
    project.write("functions/probe.wasm", &std::fs::read(probe(P1)).unwrap());
    project
}

fn ui(host: &Host) -> String {
    host.url("/_jobhost/ui/")
}

#[test]
fn dashboard_overview_counts_change_after_an_invocation() {
    let project = project(
        "[defaults]\nretry = { attempts = 1 }\n[functions.hello]\nmodule = \"probe.wasm\"\ntriggers = []\n",
    );
    let host = project.start();
    let browser = Browser::start();
    browser.goto(&ui(&host));
    browser.wait_text("#count-succeeded .n", |t| t == "0");
    let id = host.invoke("hello", "echo hi");
    host.wait_for_record(&id, PATIENCE, |r| state(r) == "succeeded");
    // The page refreshes by itself.
    browser.wait_text("#count-succeeded .n", |t| t == "1");
    // The minute it ended (the last or, past a minute's turn, the one before) has it.
    let titles = browser.texts("#chart g title");
    assert!(
        titles
            .iter()
            .any(|t| t.ends_with(": 1 succeeded, 0 failed, 0 other")),
        "{titles:?}"
    );
    for payload in ["echo two", "echo three", "exit 3", "exit 4"] {
        host.invoke("hello", payload);
    }
    browser.wait_text("#count-dead .n", |t| t == "2");
    browser.wait_text("#count-succeeded .n", |t| t == "3");
    // Ended within the same minute or two: both colours are drawn.
    wait_until(PATIENCE, || {
        let drawn = browser.texts("#chart rect.bad").len();
        (drawn >= 1 && !browser.texts("#chart rect.ok").is_empty()).then_some(())
    });
    browser.screenshot("overview");
}

#[test]
fn dashboard_filters_the_list_by_function_and_error_text_and_opens_a_record() {
    let project = project(
        "[defaults]\nretry = { attempts = 1 }\n[functions.a]\nmodule = \"probe.wasm\"\ntriggers = []\n[functions.b]\nmodule = \"probe.wasm\"\ntriggers = []\n",
    );
    let host = project.start();
    let ids: Vec<String> = [
        ("a", "echo one"),
        ("b", "echo two"),
        ("a", "exit 3"),
        ("a", "echo three"),
    ]
    .iter()
    .map(|(f, p)| host.invoke(f, p))
    .collect();
    for id in &ids {
        host.wait_for_record(id, PATIENCE, |r| matches!(state(r), "succeeded" | "dead"));
    }
    let browser = Browser::start();
    browser.goto(&format!("{}#/invocations", ui(&host)));
    wait_until(PATIENCE, || {
        (browser.texts("#invocations td.function").len() == 4).then_some(())
    });
    browser.choose("#filters select[name=function]", "a");
    browser.click("#filters button[type=submit]");
    wait_until(PATIENCE, || {
        (browser.texts("#invocations td.function") == ["a", "a", "a"]).then_some(())
    });
    browser.screenshot("invocations");
    browser.type_into("#filters input[name=error]", "EXIT");
    browser.click("#filters button[type=submit]");
    wait_until(PATIENCE, || {
        let rows = browser.eval("return [...document.querySelectorAll('#invocations tr[data-id]')].map(r => r.dataset.id);");
        (rows == json!([ids[2]])).then_some(())
    });
    assert!(
        browser
            .eval("return location.hash;")
            .as_str()
            .unwrap()
            .contains("error=EXIT"),
        "the filter is in the address, so it can be kept and shared"
    );
    // Pages of two by cursor: newest first, then the older ones, then back.
    let shown = || {
        serde_json::from_value::<Vec<String>>(browser.eval(
            "return [...document.querySelectorAll('#invocations tr[data-id]')].map(r => r.dataset.id);",
        ))
        .unwrap()
    };
    browser.goto(&format!("{}#/invocations?limit=2", ui(&host)));
    let newest: Vec<String> = ids.iter().rev().take(2).cloned().collect();
    wait_until(PATIENCE, || (shown() == newest).then_some(()));
    browser.click("#older");
    let older: Vec<String> = ids.iter().rev().skip(2).cloned().collect();
    wait_until(PATIENCE, || (shown() == older).then_some(()));
    assert_eq!(
        browser.text("#older"),
        None,
        "the last page links no older one"
    );
    browser.click("#newest");
    wait_until(PATIENCE, || (shown() == newest).then_some(()));
    browser.goto(&format!("{}#/invocations?error=EXIT", ui(&host)));
    wait_until(PATIENCE, || (shown() == [ids[2].clone()]).then_some(()));
    browser.click(&format!("#invocations tr[data-id='{}'] a", ids[2]));
    browser.wait_text("#field-state", |t| t == "dead");
    let error = browser.text("#field-error").unwrap();
    assert!(error.contains("exit"), "{error}");
    assert_eq!(browser.text("#payload").as_deref(), Some("exit 3"));
}

#[test]
fn dashboard_retry_button_runs_a_dead_invocation_again() {
    let project = project(
        "[defaults]\nretry = { attempts = 1 }\n[functions.reader]\nmodule = \"probe.wasm\"\ntriggers = []\ndirs = [{ host = \"flags\", guest = \"/flags\" }]\n",
    );
    std::fs::create_dir_all(project.path("flags")).unwrap();
    let host = project.start();
    let id = host.invoke("reader", "read /flags/ready");
    host.wait_for_record(&id, PATIENCE, |r| state(r) == "dead");
    let browser = Browser::start();
    browser.goto(&format!("{}#/invocation/{id}", ui(&host)));
    browser.wait_text("#field-state", |t| t == "dead");
    browser.screenshot("invocation");
    // What was missing is there now; the retry finds it.
    project.write("flags/ready", b"go");
    browser.click("#retry");
    browser.wait_text("#field-state", |t| t == "succeeded");
    let record = host.json(&format!("/_jobhost/invocations/{id}"));
    assert_eq!(state(&record), "succeeded", "{record}");
    let stdout = browser.text("#stdout").unwrap();
    assert!(stdout.contains("go"), "{stdout}");
}

#[test]
fn dashboard_pause_stops_a_timers_runs_and_resume_starts_them_again() {
    let project = project(
        "[functions.tick]\nmodule = \"probe.wasm\"\ntriggers = [{ every = \"200ms\" }]\nenv = { PROBE_EVENT = \"echo tick\" }\n",
    );
    let host = project.start();
    let runs = |host: &Host| {
        host.json("/_jobhost/invocations?function=tick&trigger=timer&limit=1000")
            .as_array()
            .unwrap()
            .len()
    };
    wait_until(PATIENCE, || (runs(&host) > 0).then_some(()));
    let browser = Browser::start();
    browser.goto(&format!("{}#/functions", ui(&host)));
    browser.click("tr[data-function=tick] button.pause");
    browser.wait_text("tr[data-function=tick] .paused", |t| t.contains("paused"));
    browser.screenshot("functions");
    assert_eq!(host.json("/_jobhost/functions")[0]["paused"], true);
    let before = runs(&host);
    // Three occurrences pass without a run; a run fired just before the pause may land.
    let passed = || {
        host.log()
            .iter()
            .filter(|l| l.contains("passes: the function is paused"))
            .count()
    };
    wait_until(PATIENCE, || (passed() >= 3).then_some(()));
    let during = runs(&host);
    assert!(during <= before + 1, "{before} -> {during}");
    browser.click("tr[data-function=tick] button.resume");
    browser.wait_text("tr[data-function=tick] .active", |t| t.contains("active"));
    wait_until(PATIENCE, || (runs(&host) > during + 1).then_some(()));
}

#[test]
fn dashboard_invokes_a_function_with_a_payload_and_shows_load_problems() {
    let project = project(
        "[functions.hello]\nmodule = \"probe.wasm\"\ntriggers = []\n[functions.broken]\nmodule = \"broken.wasm\"\ntriggers = []\n",
    );
    project.write("functions/broken.wasm", b"not a module");
    let host = project.start();
    let browser = Browser::start();
    browser.goto(&format!("{}#/functions", ui(&host)));
    let problem = browser.wait_text("tr[data-function=broken] .problem", |t| !t.is_empty());
    assert!(problem.contains("broken.wasm"), "{problem}");
    browser.click("tr[data-function=hello] button.invoke");
    browser.type_into("#invoke-payload", "echo from the page");
    browser.click("#invoke-submit");
    browser.click("#invoke-result a");
    browser.wait_text("#field-state", |t| t == "succeeded");
    let stdout = browser.text("#stdout").unwrap();
    assert!(stdout.contains("from the page"), "{stdout}");
    let _ = host;
}

#[test]
fn dashboard_shows_guest_output_as_text_and_runs_none_of_it() {
    let project = project("[functions.hello]\nmodule = \"probe.wasm\"\ntriggers = []\n");
    let host = project.start();
    let markup = "<script>window.pwned = 1</script><img src=x onerror=\"window.pwned = 2\">";
    let id = host.invoke("hello", &format!("echo {markup}"));
    host.wait_for_record(&id, PATIENCE, |r| state(r) == "succeeded");
    let browser = Browser::start();
    browser.goto(&format!("{}#/invocation/{id}", ui(&host)));
    let shown = browser.wait_text("#stdout", |t| !t.is_empty());
    assert!(shown.contains(markup), "{shown}");
    browser.goto(&format!("{}#/invocations", ui(&host)));
    browser.wait_text("#invocations td.function", |t| t == "hello");
    assert_eq!(browser.eval("return typeof window.pwned;"), "undefined");
    assert_eq!(
        browser.eval("return document.querySelectorAll('#main script, #main img').length;"),
        0
    );
}

#[test]
fn dashboard_asks_for_the_token_when_the_host_listens_beyond_loopback() {
    let project = project(
        "[host]\nlisten = \"0.0.0.0:0\"\nadmin_token = \"s3cret-token\"\n[functions.hello]\nmodule = \"probe.wasm\"\ntriggers = []\n",
    );
    let host = project.start();
    let port = host.addr.rsplit(':').next().unwrap().to_string();
    let browser = Browser::start();
    browser.goto(&format!("http://127.0.0.1:{port}/_jobhost/ui/"));
    browser.wait_text("#login h1", |t| t == "Sign in");
    browser.screenshot("login");
    browser.type_into("#token", "not-the-token");
    browser.click("#login button[type=submit]");
    browser.wait_text("#login-refused", |t| t.contains("refused"));
    browser.type_into("#token", "s3cret-token");
    browser.click("#login button[type=submit]");
    browser.wait_text("#count-succeeded .n", |t| t == "0");
    assert_eq!(
        browser.eval("return sessionStorage.getItem('jobhost.token');"),
        "s3cret-token"
    );
}

#[test]
fn dashboard_page_loads_without_the_token_but_its_data_needs_it() {
    let project = project("[host]\nlisten = \"0.0.0.0:0\"\nadmin_token = \"s3cret-token\"\n");
    let host = project.start();
    let port = host.addr.rsplit(':').next().unwrap().to_string();
    let local = |path: &str| {
        let url = format!("http://127.0.0.1:{port}{path}");
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .new_agent()
            .get(&url)
            .call()
            .unwrap()
    };
    let page = local("/_jobhost/ui/");
    assert_eq!(page.status(), 200);
    let policy = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        policy.starts_with("default-src 'none'; script-src 'self';"),
        "{policy}"
    );
    assert_eq!(local("/_jobhost/ui/app.js").status(), 200);
    assert_eq!(local("/_jobhost/stats").status(), 401);
    let bad = host.request_with(
        "GET",
        "/_jobhost/stats?minutes=0",
        b"",
        &[("Authorization", "Bearer s3cret-token")],
    );
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(bad.body.contains("from 1 to 1440"), "{}", bad.body);
}

#[test]
fn dashboard_links_a_chain_step_to_its_parent_and_children() {
    let project = project(
        "[functions.first]\nmodule = \"probe.wasm\"\ntriggers = []\non_success = [\"second\"]\n[functions.second]\nmodule = \"probe.wasm\"\ntriggers = []\n",
    );
    let host = project.start();
    let first = host.invoke("first", "relay step");
    let record = host.wait_for_record(&first, PATIENCE, |r| {
        r["children"].as_array().is_some_and(|c| !c.is_empty())
    });
    let second = record["children"][0].as_str().unwrap().to_string();
    let browser = Browser::start();
    browser.goto(&format!("{}#/invocation/{first}", ui(&host)));
    browser.wait_text("#field-children", |t| t.contains(&second));
    browser.click("#field-children a");
    browser.wait_text("h1", |t| t.starts_with("second"));
    assert_eq!(
        browser.text("#field-parent").as_deref(),
        Some(first.as_str())
    );
    browser.click("#field-parent a");
    browser.wait_text("h1", |t| t.starts_with("first"));
}

#[test]
fn dashboard_cancel_button_ends_a_running_invocation() {
    let project =
        project("[functions.slow]\nmodule = \"probe.wasm\"\ntriggers = []\ntimeout = \"5m\"\n");
    let host = project.start();
    let id = host.invoke("slow", "sleep 120000");
    host.wait_for_record(&id, PATIENCE, |r| state(r) == "running");
    let browser = Browser::start();
    browser.goto(&format!("{}#/invocation/{id}", ui(&host)));
    browser.wait_text("#field-state", |t| t == "running");
    browser.click("#cancel");
    browser.wait_text("#field-state", |t| t == "cancelled");
    assert_eq!(
        browser.text("#cancel"),
        None,
        "an ended invocation has no Cancel"
    );
    let record = host.json(&format!("/_jobhost/invocations/{id}"));
    assert_eq!(state(&record), "cancelled", "{record}");
}

#[test]
fn dashboard_auto_refresh_can_be_paused_and_resumed() {
    let project = project("[functions.hello]\nmodule = \"probe.wasm\"\ntriggers = []\n");
    let host = project.start();
    let browser = Browser::start();
    browser.goto(&ui(&host));
    browser.wait_text("#count-succeeded .n", |t| t == "0");
    browser.click("#refresh-toggle");
    browser.wait_text("#refresh-toggle", |t| t == "Resume auto-refresh");
    let ticks = || {
        browser
            .eval("return Number(document.body.dataset.ticks || 0);")
            .as_u64()
            .unwrap()
    };
    // A refresh that was on its way when the button was pressed has landed a tick later.
    let paused = ticks();
    wait_until(PATIENCE, || (ticks() > paused).then_some(()));
    let id = host.invoke("hello", "echo while paused");
    host.wait_for_record(&id, PATIENCE, |r| state(r) == "succeeded");
    // Two refresh ticks pass after the run ended: the page keeps what it showed.
    let after = ticks();
    wait_until(PATIENCE, || (ticks() >= after + 2).then_some(()));
    assert_eq!(browser.text("#count-succeeded .n").as_deref(), Some("0"));
    browser.click("#refresh-toggle");
    browser.wait_text("#count-succeeded .n", |t| t == "1");
}

#[test]
fn dashboard_overview_lists_the_hosts_sharing_a_store() {
    let url = crate::postgres_server::database();
    let config = "[host]\nstore = { postgres = { env = \"DATABASE_URL\" } }\n[functions.hello]\nmodule = \"probe.wasm\"\ntriggers = []\n";
    let (one, two) = (project(config), project(config));
    let start = |p: &Project| {
        p.start_with(|cmd| {
            cmd.env("DATABASE_URL", &url);
        })
    };
    let (first, second) = (start(&one), start(&two));
    let id = |p: &Project| {
        std::fs::read_to_string(p.path(".jobhost/host-id"))
            .unwrap()
            .trim()
            .to_string()
    };
    let browser = Browser::start();
    browser.goto(&ui(&first));
    wait_until(PATIENCE, || {
        let mut shown = browser.texts("#hosts tbody tr td:first-child");
        shown.sort();
        let mut ids = vec![id(&one), id(&two)];
        ids.sort();
        (shown == ids).then_some(())
    });
    let _ = second;
}

#[test]
fn dashboard_retries_every_dead_invocation_the_filter_matches() {
    let project = project(
        "[defaults]\nretry = { attempts = 1 }\n[functions.a]\nmodule = \"probe.wasm\"\ntriggers = []\n[functions.b]\nmodule = \"probe.wasm\"\ntriggers = []\n",
    );
    let host = project.start();
    let dead: Vec<String> = ["a", "a", "b"]
        .iter()
        .map(|f| host.invoke(f, "exit 3"))
        .collect();
    for id in &dead {
        host.wait_for_record(id, PATIENCE, |r| state(r) == "dead");
    }
    let browser = Browser::start();
    browser.goto(&format!("{}#/invocations?function=a&state=dead", ui(&host)));
    browser.wait_text("#retry-dead", |t| t.contains("of a"));
    browser.click("#retry-dead");
    browser.wait_text("#retry-dead-result", |t| t == "2 queued again");
    // Each of a's ran again (and failed again); b's was left alone.
    for id in &dead[..2] {
        host.wait_for_record(id, PATIENCE, |r| state(r) == "dead" && r["attempt"] == 2);
    }
    let other = host.json(&format!("/_jobhost/invocations/{}", dead[2]));
    assert_eq!(other["attempt"], 1, "{other}");
}
