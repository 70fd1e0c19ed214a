//! What Baton's two test trees (the library's `shared/tests/` and the CLI's
//! `cli/tests/`) share. A dev-dependency only; it does not depend on Baton itself, so the
//! library's own tests see one copy of its types.
//!
//! * [`Proc`]: a child process killed when dropped; [`free_port`], [`wait_tcp`],
//!   [`require`].
//! * [`moto`]: moto server (AWS APIs) on a free port, and SDK configuration for it.
//! * [`registry`]: Debian's `docker-registry` on a free port, and real pushes to it with
//!   `umoci` and `skopeo`.
//! * [`prometheus`]: Prometheus on a free port, scraping what a test serves.
//! * [`receiver`]: an HTTP receiver recording what is POSTed (a chat tool, Slack, a sink).
//! * [`smtp`]: aiosmtpd on a free port, keeping what it receives in a Maildir.
//! * [`tls`]: a test CA and a loopback serving certificate, by `openssl`.
//! * [`k8s`]: a real Kubernetes control plane on loopback (etcd, kube-apiserver,
//!   controller manager, scheduler, kwok), once per test process.
//! * [`build`]: configuration and registry-notification builders.
//! * [`fleet`]: many apps for load (soak, benchmark), and a process's memory and a
//!   directory's disk.
//!
//! `.ci/run` installs every program these start; a missing one fails the test with what
//! to install (it never skips).

pub mod build;
pub mod fleet;
pub mod k8s;
pub mod moto;
pub mod prometheus;
pub mod receiver;
pub mod registry;
pub mod smtp;
pub mod tls;

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

/// A child process killed (and reaped) when dropped.
#[derive(Debug)]
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free loopback port (bound and released; the program started next takes it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Waits until something accepts connections on loopback `port`, at most `within`.
pub async fn wait_tcp(port: u16, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on port {port} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asserts that `program` is on `PATH`, saying how to install it.
pub fn require(program: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{program} is not installed: `apt-get install docker-registry skopeo umoci` (.ci/run does this)"
    );
}

/// `program` from the CI virtualenv (`target/ci-venv/bin`, where `.ci/run` installs
/// the Python tools), else from `PATH`.
pub fn venv_program(program: &str) -> std::path::PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/ci-venv/bin")
        .join(program);
    if venv.is_file() {
        return venv;
    }
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(program))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "{program} is not installed: run .ci/run once (it installs it into target/ci-venv)"
            )
        })
}
