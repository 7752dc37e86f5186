//! The watch rules and their receipts, with real files and the real watcher.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::{Host, P1, P2, Project, example, probe, state, wait_until};

fn watch_project(trigger: &str, event: &str) -> Project {
    let project = Project::new(&format!(
        r#"
[defaults]
retry = {{ attempts = 1 }}
[functions.onfile]
module = "probe.wasm"
triggers = [{trigger}]
env = {{ PROBE_EVENT = "{event}" }}
[host]
max_concurrency = 8
"#
    ));
    project.function("probe", &probe(P1));
    std::fs::create_dir_all(project.path("inbox")).unwrap();
    project
}

fn records(host: &Host) -> Vec<serde_json::Value> {
    host.json("/_jobhost/invocations?function=onfile&limit=1000")
        .as_array()
        .unwrap()
        .clone()
}

fn file_path(r: &serde_json::Value) -> String {
    let out = r["stdout"].as_str().unwrap_or_default();
    out.lines()
        .find_map(|l| l.strip_prefix("JOBHOST_FILE_PATH="))
        .unwrap_or_default()
        .to_string()
}

/// Waits until `n` invocations finished, then for a quiet second in which no more came.
fn exactly(host: &Host, n: usize) -> Vec<serde_json::Value> {
    wait_until(Duration::from_secs(30), || {
        let list = records(host);
        assert!(list.len() <= n, "more than {n} invocations: {list:#?}");
        (list.len() == n
            && list
                .iter()
                .all(|r| state(r) != "queued" && state(r) != "running"))
        .then_some(())
    });
    let quiet_until = Instant::now() + Duration::from_secs(1);
    wait_until(Duration::from_secs(5), || {
        assert_eq!(records(host).len(), n, "an extra invocation came");
        (Instant::now() > quiet_until).then_some(())
    });
    records(host)
}

/// Waits until the watch handled what was there at start and watches for more.
fn watching(host: &Host) {
    host.wait_for_metric(r#"jobhost_watches{state="watching"}"#, 1.0);
}

#[test]
fn fifty_files_copied_in_at_once_fire_exactly_fifty_invocations() {
    let project = watch_project(r#"{ watch = "inbox" }"#, "env");
    let host = project.start();
    watching(&host);
    for i in 0..50 {
        project.write(
            &format!("inbox/file{i}.txt"),
            format!("content {i}").as_bytes(),
        );
    }
    let list = exactly(&host, 50);
    let mut paths: Vec<String> = list.iter().map(file_path).collect();
    paths.sort();
    paths.dedup();
    assert_eq!(paths.len(), 50);
    assert!(
        list.iter()
            .all(|r| state(r) == "succeeded" && r["trigger"] == "file")
    );
    assert!(
        list[0]["stdout"]
            .as_str()
            .unwrap()
            .contains("JOBHOST_FILE_EVENT=created")
    );
}

#[test]
fn a_file_written_in_ten_chunks_fires_once_and_the_guest_reads_all_of_it() {
    let project = watch_project(r#"{ watch = "inbox" }"#, "input");
    let host = project.start();
    watching(&host);
    let mut file = std::fs::File::create(project.path("inbox/big.bin")).unwrap();
    for _ in 0..10 {
        use std::io::Write;
        file.write_all(&[7u8; 10_000]).unwrap();
        file.flush().unwrap();
        std::thread::sleep(Duration::from_millis(10)); // the writer's pace, not a wait
    }
    drop(file);
    let list = exactly(&host, 1);
    assert!(
        list[0]["stdout"]
            .as_str()
            .unwrap()
            .contains("read 100000 bytes of /input/big.bin (created)"),
        "{}",
        list[0]
    );
}

#[test]
fn atomic_saves_fire_once_and_swap_files_never() {
    let project = watch_project(r#"{ watch = "inbox" }"#, "input");
    let host = project.start();
    watching(&host);
    // An editor's atomic save: write a temporary file, rename it over the target.
    project.write("inbox/.notes.txt.tmp123", b"first version");
    std::fs::rename(
        project.path("inbox/.notes.txt.tmp123"),
        project.path("inbox/notes.txt"),
    )
    .unwrap();
    exactly(&host, 1);
    project.write("inbox/notes.txt.tmp", b"second, longer version");
    std::fs::rename(
        project.path("inbox/notes.txt.tmp"),
        project.path("inbox/notes.txt"),
    )
    .unwrap();
    let list = exactly(&host, 2);
    assert!(
        list[0]["stdout"].as_str().unwrap().contains("(modified)"),
        "{}",
        list[0]
    );
    // A rename into the folder from outside it.
    project.write("outside.txt", b"moved in");
    std::fs::rename(project.path("outside.txt"), project.path("inbox/moved.txt")).unwrap();
    exactly(&host, 3);
    for swap in [
        "inbox/notes.txt.swp",
        "inbox/notes.txt~",
        "inbox/.#notes.txt",
        "inbox/x.tmp",
        "inbox/.hidden/a.txt",
    ] {
        project.write(swap, b"ignored");
    }
    exactly(&host, 3);
}

#[test]
fn nested_folders_fire_only_with_recursive() {
    for (recursive, expect) in [(true, 2), (false, 1)] {
        let project = watch_project(
            &format!(r#"{{ watch = "inbox", recursive = {recursive} }}"#),
            "env",
        );
        let host = project.start();
        watching(&host);
        project.write("inbox/top.txt", b"top");
        project.write("inbox/sub/deeper/nested.txt", b"nested");
        let list = exactly(&host, expect);
        if recursive {
            assert!(
                list.iter()
                    .any(|r| file_path(r) == "/input/sub/deeper/nested.txt")
            );
        }
    }
}

#[test]
fn pattern_selects_files() {
    let project = watch_project(r#"{ watch = "inbox", pattern = "*.png" }"#, "env");
    let host = project.start();
    watching(&host);
    project.write("inbox/a.png", b"png");
    project.write("inbox/a.txt", b"txt");
    let list = exactly(&host, 1);
    assert_eq!(file_path(&list[0]), "/input/a.png");
}

#[test]
fn a_restart_fires_for_what_changed_while_down_and_never_again_for_what_was_handled() {
    let project = watch_project(r#"{ watch = "inbox" }"#, "env");
    project.write("inbox/old1.txt", b"1");
    project.write("inbox/old2.txt", b"2");
    let host = project.start();
    exactly(&host, 2);
    let (status, _) = host.sigterm(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0));

    for i in 0..5 {
        project.write(&format!("inbox/new{i}.txt"), b"new");
    }
    project.write("inbox/old1.txt", b"1 touched and longer");
    let host = project.start();
    let list = exactly(&host, 8);
    assert_eq!(
        list.iter()
            .filter(|r| r["stdout"]
                .as_str()
                .unwrap()
                .contains("JOBHOST_FILE_EVENT=modified"))
            .count(),
        1
    );
    let (status, _) = host.sigterm(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0));

    let host = project.start();
    exactly(&host, 8);
}

#[test]
fn the_guest_cannot_write_to_input() {
    let project = watch_project(r#"{ watch = "inbox" }"#, "write /input/sneaky.txt");
    let host = project.start();
    watching(&host);
    project.write("inbox/a.txt", b"a");
    let list = exactly(&host, 1);
    assert_eq!(
        (state(&list[0]), list[0]["error"].as_str()),
        ("dead", Some("exit 1"))
    );
    assert!(!project.path("inbox/sneaky.txt").exists());
}

#[test]
fn a_folder_that_appears_later_or_comes_back_is_watched_without_a_restart() {
    let project = watch_project(r#"{ watch = "later" }"#, "env");
    let host = project.start();
    host.wait_for_metric(r#"jobhost_watches{state="waiting"}"#, 1.0);
    project.write("later/first.txt", b"1");
    exactly(&host, 1);
    watching(&host);
    std::fs::remove_dir_all(project.path("later")).unwrap();
    host.wait_for_metric(r#"jobhost_watches{state="waiting"}"#, 1.0);
    project.write("later/second.txt", b"2");
    let list = exactly(&host, 2);
    assert!(list.iter().any(|r| file_path(r) == "/input/second.txt"));
}

fn write_png(path: &Path, width: u32, height: u32) {
    let file = std::fs::File::create(path).unwrap();
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().unwrap();
    let pixels: Vec<u8> = (0..width * height)
        .flat_map(|i| [(i % 251) as u8, (i % 13) as u8, 200])
        .collect();
    writer.write_image_data(&pixels).unwrap();
}

fn png_size(path: &Path) -> (u32, u32) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let reader = decoder.read_info().unwrap();
    (reader.info().width, reader.info().height)
}

#[test]
fn the_thumbnail_example_scales_dropped_images() {
    let project = Project::new(
        r#"
[functions.thumbnail]
memory = "256MiB"
triggers = [{ watch = "data/inbox", pattern = "*.png", events = ["created", "modified"] }]
dirs = [{ host = "data/thumbs", guest = "/out", write = true }]
config = { size = "128" }
"#,
    );
    project.function("thumbnail", &example("thumbnail", P2));
    std::fs::create_dir_all(project.path("data/inbox")).unwrap();
    std::fs::create_dir_all(project.path("data/thumbs")).unwrap();
    let host = project.start();
    watching(&host);
    let cases = [
        ("wide.png", (640, 320), (128, 64)),
        ("tall.png", (300, 600), (64, 128)),
        ("small.png", (50, 40), (50, 40)),
    ];
    for (name, (w, h), _) in cases {
        // Written beside and renamed in, as a careful uploader does.
        let tmp = project.path(&format!("data/{name}"));
        write_png(&tmp, w, h);
        std::fs::rename(&tmp, project.path(&format!("data/inbox/{name}"))).unwrap();
    }
    for (name, _, expect) in cases {
        let thumb = project.path(&format!("data/thumbs/{name}"));
        wait_until(Duration::from_secs(30), || {
            let r = records_of(&host, "thumbnail");
            assert!(
                r.iter().all(|r| state(r) != "dead" && state(r) != "failed"),
                "{r:#?}"
            );
            thumb.exists().then_some(())
        });
        let size = wait_until(Duration::from_secs(10), || {
            std::panic::catch_unwind(|| png_size(&thumb)).ok()
        });
        assert_eq!(size, expect, "{name}");
    }
}

fn records_of(host: &Host, function: &str) -> Vec<serde_json::Value> {
    host.json(&format!("/_jobhost/invocations?function={function}"))
        .as_array()
        .unwrap()
        .clone()
}
