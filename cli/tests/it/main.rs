//! Integration tests through the real `baton` binary: the demo, the operator commands,
//! their `--json` output and their one-line errors.

mod attacks;
mod audit;
mod aws_cli;
mod canary;
mod cluster;
mod dashboard;
mod faults;
mod registry;
mod runtime;
mod slack;
mod soak;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

pub(crate) const EXAMPLE: &str = include_str!("../../../examples/baton.yaml");
pub(crate) const STAGING: &str = include_str!("../../../examples/manifests/staging/web.yaml");

pub use baton_testkit::Proc;
pub use baton_testkit::moto::sdk;

/// moto server on a free port (stopped when the first part is dropped) and its endpoint.
/// The objects under `prefix` of the store under `root/.baton`, as the store gives them
/// (a run's segment decoded), read on a thread of its own so that sync and async tests
/// can both ask.
pub fn stored_under(root: &Path, prefix: &str) -> Vec<(String, String)> {
    let (dir, prefix) = (root.join(".baton/store"), prefix.to_string());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let store = baton::adapters::embedded::DirStore::open(&dir).unwrap();
            baton::ports::ObjectStore::get_prefix(&store, &prefix)
                .await
                .unwrap()
                .into_iter()
                .map(|(k, o)| (k, String::from_utf8_lossy(&o.bytes).into_owned()))
                .collect()
        })
    })
    .join()
    .unwrap()
}

/// One object of the store under `root/.baton` (panics when absent).
pub fn stored(root: &Path, key: &str) -> String {
    stored_under(root, key)
        .into_iter()
        .find(|(k, _)| k == key)
        .unwrap_or_else(|| panic!("no object {key}"))
        .1
}

pub async fn moto() -> (baton_testkit::moto::Moto, String) {
    let m = baton_testkit::moto::moto().await;
    let endpoint = m.endpoint.clone();
    (m, endpoint)
}

fn baton(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(args)
        .current_dir(dir)
        .env_remove("BATON_CONFIG")
        .env_remove("BATON_STATE_DIR")
        .env("NO_COLOR", "1")
        .output()
        .expect("run baton")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", stdout(o), stderr(o)))
}

/// A project directory with the example configuration and manifests.
fn project() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    std::fs::write(root.join("baton.yaml"), EXAMPLE).unwrap();
    for env in ["staging", "production"] {
        std::fs::create_dir_all(root.join("manifests").join(env)).unwrap();
        std::fs::write(root.join("manifests").join(env).join("web.yaml"), STAGING).unwrap();
    }
    (dir, root)
}

pub(crate) fn push_file(root: &Path, tag: &str, hex: char, at: &str) -> PathBuf {
    let digest = format!("sha256:{}", hex.to_string().repeat(64));
    let v = serde_json::json!({"events": [{
        "id": format!("n-{tag}"), "timestamp": at, "action": "push",
        "target": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest,
                   "repository": "demo/web", "url": format!("http://localhost:5000/v2/demo/web/manifests/{digest}"), "tag": tag},
        "request": {"host": "localhost:5000"}, "actor": {"name": "ci-bot"}}]});
    let p = root.join(format!("push-{tag}.json"));
    std::fs::write(&p, v.to_string()).unwrap();
    p
}

#[test]
fn demo_runs_every_stage_and_deploys_both_environments() {
    let dir = tempfile::tempdir().unwrap();
    let o = baton(dir.path(), &["demo", "--dir", "demo-state"]);
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("status: deployed"), "{out}");
    assert!(out.contains("approving as alice"), "{out}");
    for stage in ["ingest", "test", "gate", "approve", "deploy", "promote"] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(stage) && l.contains("succeeded")),
            "{stage} in {out}"
        );
    }
    for env in ["staging", "production"] {
        let m = std::fs::read_to_string(
            dir.path()
                .join(format!("demo-state/manifests/{env}/web.yaml")),
        )
        .unwrap();
        assert!(m.contains("image: localhost:5000/demo/web@sha256:"), "{m}");
        assert!(m.contains("# set by baton"), "comments survive: {m}");
    }
    let log = std::fs::read_to_string(dir.path().join("demo-state/notifications.log")).unwrap();
    assert_eq!(log.lines().count(), 10, "{log}");

    // twice in a row works (fresh state each time), and --json describes the run
    let o = baton(dir.path(), &["--json", "demo", "--dir", "demo-state"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["ok"], true);
    let types: Vec<&str> = v["run"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "image.built",
            "tests.passed",
            "approval.granted",
            "deploy.succeeded",
            "verification.passed",
            "approval.requested",
            "image.promoted",
            "approval.granted",
            "deploy.succeeded",
            "image.promoted"
        ]
    );
    assert_eq!(v["deployed"].as_array().unwrap().len(), 2);
    assert!(
        v["deployed"][1]["image"]
            .as_str()
            .unwrap()
            .contains("@sha256:")
    );

    // status works on the demo's state
    let o = baton(
        dir.path(),
        &[
            "--config",
            "demo-state/baton.yaml",
            "--state-dir",
            "demo-state",
            "--json",
            "status",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json(&o)[0]["status"], "deployed");

    // gc keeps the live run (and says so), removes nothing from a fresh state
    let demo = [
        "--config",
        "demo-state/baton.yaml",
        "--state-dir",
        "demo-state",
    ];
    let o = baton(
        dir.path(),
        &[&demo[..], &["--json", "gc", "--dry-run"]].concat(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(
        (v["dry_run"].as_bool(), v["kept"].as_u64()),
        (Some(true), Some(1)),
        "{v}"
    );
    assert_eq!(v["removed"], serde_json::json!([]));
    assert_eq!(v["history_removed"], 0, "{v}");
    let o = baton(dir.path(), &[&demo[..], &["gc"]].concat());
    assert!(stdout(&o).contains("removed 0 run(s)"), "{}", stdout(&o));
}

#[test]
fn demo_refuses_to_wipe_a_foreign_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("precious")).unwrap();
    std::fs::write(dir.path().join("precious/thesis.txt"), "do not delete").unwrap();
    let o = baton(dir.path(), &["demo", "--dir", "precious"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not a previous demo"), "{}", stderr(&o));
    assert!(dir.path().join("precious/thesis.txt").exists());
}

#[test]
fn ingest_approve_status_and_rollback_through_the_cli() {
    let (_d, root) = project();
    let p1 = push_file(&root, "1.0.0", 'a', "2026-11-20T10:00:00Z");
    let o = baton(&root, &["--json", "ingest", p1.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&o);
    let run = v["runs"][0]["run"].as_str().unwrap().to_string();
    assert_eq!(v["runs"][0]["status"], "awaiting approval (production)");

    // operator errors are one line and a non-zero exit
    let o = baton(
        &root,
        &["approve", &run, "--env", "production", "--as", "mallory"],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: ") && err.contains("mallory may not"),
        "{err}"
    );
    let o = baton(&root, &["approve", &run, "--env", "qa", "--as", "alice"]);
    assert!(
        stderr(&o).contains("environment not found: qa"),
        "{}",
        stderr(&o)
    );
    let o = baton(
        &root,
        &[
            "approve",
            "ffffffff",
            "--env",
            "production",
            "--as",
            "alice",
        ],
    );
    assert!(
        stderr(&o).contains("run not found: ffffffff"),
        "{}",
        stderr(&o)
    );
    let o = baton(&root, &["retry", &run, "build"]);
    assert!(
        stderr(&o).contains("unknown stage \"build\""),
        "{}",
        stderr(&o)
    );
    let o = baton(&root, &["rollback", "web", "--env", "production"]);
    assert!(
        stderr(&o).contains("nothing is deployed to production"),
        "{}",
        stderr(&o)
    );

    let o = baton(
        &root,
        &[
            "--json",
            "approve",
            &run[..6],
            "--env",
            "production",
            "--as",
            "bob",
            "--comment",
            "lgtm",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["decision"]["status"], "granted");
    assert_eq!(v["run_status"], "deployed");

    let o = baton(&root, &["status", &run]);
    assert!(o.status.success());
    assert!(stdout(&o).contains("approved by bob"), "{}", stdout(&o));

    // a second image, approved, then rolled back
    let p2 = push_file(&root, "1.1.0", 'b', "2026-11-20T11:00:00Z");
    let o = baton(&root, &["--json", "ingest", p2.to_str().unwrap()]);
    let run2 = json(&o)["runs"][0]["run"].as_str().unwrap().to_string();
    let o = baton(
        &root,
        &["approve", &run2, "--env", "production", "--as", "alice"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let prod = std::fs::read_to_string(root.join("manifests/production/web.yaml")).unwrap();
    assert!(prod.contains(&"b".repeat(64)));
    let o = baton(
        &root,
        &[
            "--json",
            "rollback",
            "web",
            "--env",
            "production",
            "--as",
            "alice",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(json(&o)["to"].as_str().unwrap().ends_with(&"a".repeat(64)));
    let prod = std::fs::read_to_string(root.join("manifests/production/web.yaml")).unwrap();
    assert!(prod.contains(&"a".repeat(64)), "{prod}");
    let o = baton(
        &root,
        &["rollback", "web", "--env", "production", "--to", "cccccccc"],
    );
    assert!(
        stderr(&o).contains("was never deployed to production"),
        "{}",
        stderr(&o)
    );

    let o = baton(&root, &["--json", "status"]);
    let runs = json(&o);
    assert_eq!(runs.as_array().unwrap().len(), 2);
    // --limit: the newest only, and a hint that there are more
    let o = baton(&root, &["--json", "status", "--limit", "1"]);
    let newest = json(&o);
    assert_eq!(newest.as_array().map(Vec::len), Some(1));
    assert_eq!(newest[0]["run"], runs[0]["run"]);
    let o = baton(&root, &["status", "--limit", "1"]);
    assert!(
        stdout(&o).contains("the newest 1; --limit N for more"),
        "{}",
        stdout(&o)
    );
    let o = baton(&root, &["status", "--limit", "0"]);
    assert_eq!(o.status.code(), Some(2), "a usage error: {}", stderr(&o));
}

#[test]
fn retry_reruns_one_stage_via_cli() {
    let (_d, root) = project();
    std::fs::remove_dir_all(root.join("manifests/staging")).unwrap();
    let p1 = push_file(&root, "1.0.0", 'a', "2026-11-20T10:00:00Z");
    let o = baton(&root, &["--json", "ingest", p1.to_str().unwrap()]);
    let v = json(&o);
    assert_eq!(v["runs"][0]["status"], "failed at deploy (staging)");
    let run = v["runs"][0]["run"].as_str().unwrap().to_string();
    std::fs::create_dir_all(root.join("manifests/staging")).unwrap();
    std::fs::write(root.join("manifests/staging/web.yaml"), STAGING).unwrap();
    let o = baton(
        &root,
        &["--json", "retry", &run, "deploy", "--env", "staging"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["status"], "succeeded");
    assert_eq!(v["run"]["status"], "awaiting approval (production)");
    let deploy = v["run"]["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stage"] == "deploy")
        .unwrap()
        .clone();
    assert_eq!(deploy["attempt"], 2);
    let o = baton(&root, &["retry", &run, "test", "--env", "staging"]);
    assert!(stderr(&o).contains("drop --env"), "{}", stderr(&o));
}

#[test]
fn events_validate_accepts_samples_and_names_bad_fields() {
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../events");
    let mut files = vec![];
    for sub in ["baton", "triggers", "aws"] {
        for e in std::fs::read_dir(samples.join(sub)).unwrap() {
            files.push(e.unwrap().path().to_string_lossy().into_owned());
        }
    }
    let mut args = vec!["--json", "events", "validate"];
    args.extend(files.iter().map(String::as_str));
    let dir = tempfile::tempdir().unwrap();
    let o = baton(dir.path(), &args);
    assert!(o.status.success(), "{}", stdout(&o));
    let v = json(&o);
    assert_eq!(v.as_array().unwrap().len(), files.len());

    let mut bad: Value = serde_json::from_str(
        &std::fs::read_to_string(samples.join("baton/deploy.succeeded.json")).unwrap(),
    )
    .unwrap();
    bad["data"]["image"]["digest"] = Value::from("latest");
    std::fs::write(dir.path().join("bad.json"), bad.to_string()).unwrap();
    let o = baton(dir.path(), &["events", "validate", "bad.json"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("data.image.digest"), "{}", stdout(&o));
}

#[test]
fn schema_command_matches_checked_in_schemas() {
    let dir = tempfile::tempdir().unwrap();
    let o = baton(dir.path(), &["events", "schema", "--out", "schemas"]);
    assert!(o.status.success());
    let checked_in = Path::new(env!("CARGO_MANIFEST_DIR")).join("../events/schema");
    let mut n = 0;
    for e in std::fs::read_dir(dir.path().join("schemas")).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            std::fs::read_to_string(checked_in.join(name)).unwrap()
        );
        n += 1;
    }
    assert_eq!(n, baton::event::EventType::ALL.len());
}

#[test]
fn missing_configuration_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let o = baton(dir.path(), &["status"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("no configuration at baton.yaml"),
        "{}",
        stderr(&o)
    );
    std::fs::write(
        dir.path().join("baton.yaml"),
        EXAMPLE.replace("required: 1", "required: 9"),
    )
    .unwrap();
    let o = baton(dir.path(), &["status"]);
    assert!(
        stderr(&o).contains("apps[0].environments[1].approval.required"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn status_watch_prints_changes_as_json_lines() {
    use std::io::{BufRead, BufReader};
    let (_d, root) = project();
    let p1 = push_file(&root, "1.0.0", 'a', "2026-11-20T10:00:00Z");
    assert!(
        baton(&root, &["ingest", p1.to_str().unwrap()])
            .status
            .success()
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["--json", "status", "--watch"])
        .current_dir(&root)
        .env_remove("BATON_CONFIG")
        .env_remove("BATON_STATE_DIR")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first[0]["status"], "awaiting approval (production)");
    let run = first[0]["run"].as_str().unwrap().to_string();
    let o = baton(
        &root,
        &["approve", &run, "--env", "production", "--as", "alice"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let second: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(second[0]["status"], "deployed", "the watch saw the change");
    let _ = child.kill();
    let _ = child.wait();
}

/// `baton --json status | head`: a report whose reader has gone ends by SIGPIPE, as a
/// Unix filter does, with no panic on stderr.
#[test]
fn a_report_to_a_closed_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["--json", "audit"])
        .current_dir(&root)
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
