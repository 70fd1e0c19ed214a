//! Debian's `docker-registry` (CNCF distribution) on a free loopback port, and real
//! pushes to it: `umoci` builds an image, `skopeo` pushes it.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{Proc, free_port, require, wait_tcp};

/// Starts a registry storing under `dir`, notifying `notify` (`(url, Authorization
/// header value)`) of every push when given; its port.
pub async fn start(dir: &Path, notify: Option<(&str, &str)>) -> (Proc, u16) {
    require("docker-registry");
    let port = free_port();
    let notifications = match notify {
        Some((url, secret)) => format!(
            "notifications:\n  endpoints:\n    - name: baton\n      url: {url}\n      headers: {{ Authorization: [\"{secret}\"] }}\n      timeout: 2s\n      threshold: 10\n      backoff: 200ms\n"
        ),
        None => String::new(),
    };
    let cfg = format!(
        "version: 0.1\nlog: {{ level: error }}\nstorage:\n  filesystem: {{ rootdirectory: {} }}\n  delete: {{ enabled: true }}\nhttp: {{ addr: 127.0.0.1:{port} }}\n{notifications}",
        dir.join("registry-data").display()
    );
    let path = dir.join("registry.yml");
    std::fs::write(&path, cfg).expect("write registry.yml");
    let log = std::fs::File::create(dir.join("registry.log")).expect("create registry.log");
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start docker-registry");
    let proc = Proc(child);
    wait_tcp(port, Duration::from_secs(20), "docker-registry").await;
    (proc, port)
}

/// Builds an image whose config names `tag` (so every tag has its own digest) and
/// pushes it to the registry on `port`; the digest the registry reports.
pub fn push(dir: &Path, port: u16, repo: &str, tag: &str) -> String {
    require("umoci");
    require("skopeo");
    let layout = dir.join("oci");
    if !layout.exists() {
        run(Command::new("umoci")
            .args(["init", "--layout"])
            .arg(&layout));
    }
    let image = format!("{}:{tag}", layout.display());
    run(Command::new("umoci").args(["new", "--image", &image]));
    run(Command::new("umoci").args([
        "config",
        "--image",
        &image,
        "--config.env",
        &format!("VERSION={tag}"),
    ]));
    run(Command::new("skopeo").args([
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        &format!("oci:{image}"),
        &format!("docker://127.0.0.1:{port}/{repo}:{tag}"),
    ]));
    digest_of(port, repo, tag)
}

/// The digest `repo:tag` has in the registry on `port`. A read that fails is tried
/// again a few times before it fails the test: the registry's filesystem storage has
/// answered a manifest read with a 500 while other requests wrote to the repository.
pub fn digest_of(port: u16, repo: &str, tag: &str) -> String {
    for _ in 0..10 {
        if let Some(digest) = try_digest_of(port, repo, tag) {
            return digest;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    run(Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--format", "{{.Digest}}"])
        .arg(format!("docker://127.0.0.1:{port}/{repo}:{tag}")))
}

/// The digest `tag` names now, or `None` while the tag does not exist.
pub fn try_digest_of(port: u16, repo: &str, tag: &str) -> Option<String> {
    let out = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--format", "{{.Digest}}"])
        .arg(format!("docker://127.0.0.1:{port}/{repo}:{tag}"))
        .output()
        .unwrap_or_else(|e| panic!("skopeo: {e}"));
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Waits (30 s at most) until `tag` names `want`: a promotion retags the registry in its
/// own stage, which may end after the run's status has moved on (the next environment's
/// gate runs beside it).
pub async fn wait_tag(port: u16, repo: &str, tag: &str, want: &str) {
    let start = std::time::Instant::now();
    loop {
        let now = try_digest_of(port, repo, tag);
        if now.as_deref() == Some(want) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{repo}:{tag} is {now:?}, never {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs a command to success; its trimmed standard output.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
