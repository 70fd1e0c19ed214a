//! aiosmtpd (PyPI, in the CI virtualenv) on a free loopback port, keeping every message
//! it receives in a Maildir; with a certificate it offers STARTTLS and requires it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{Proc, free_port, venv_program, wait_tcp};

/// A running SMTP server.
pub struct Smtp {
    _proc: Proc,
    pub port: u16,
    pub maildir: PathBuf,
}

/// Starts aiosmtpd under `dir`; `tls`: (certificate, key) PEM files for STARTTLS.
pub async fn start(dir: &Path, tls: Option<(&Path, &Path)>) -> Smtp {
    let port = free_port();
    let maildir = dir.join("maildir");
    let mut cmd = Command::new(venv_program("aiosmtpd"));
    cmd.args(["-n", "-l", &format!("127.0.0.1:{port}")])
        .args(["-c", "aiosmtpd.handlers.Mailbox"]);
    if let Some((cert, key)) = tls {
        cmd.arg("--tlscert").arg(cert).arg("--tlskey").arg(key);
    }
    let log = std::fs::File::create(dir.join("smtp.log")).expect("create smtp.log");
    let child = cmd
        .arg(&maildir)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start aiosmtpd (pip install aiosmtpd; .ci/run does)");
    let proc = Proc(child);
    wait_tcp(port, Duration::from_secs(20), "aiosmtpd").await;
    Smtp {
        _proc: proc,
        port,
        maildir,
    }
}

impl Smtp {
    /// Every message received so far, as text (headers and body).
    pub fn messages(&self) -> Vec<String> {
        let mut out = vec![];
        for sub in ["new", "cur"] {
            if let Ok(entries) = std::fs::read_dir(self.maildir.join(sub)) {
                for e in entries.flatten() {
                    if let Ok(text) = std::fs::read_to_string(e.path()) {
                        out.push(text);
                    }
                }
            }
        }
        out
    }
}
