//! Child processes Baton starts for users' commands (the `command` test runner, the
//! Lambda test function, later verification checks). Pushed code runs in them, so they
//! get nothing of Baton's own: the environment is cleared and holds only `PATH` and the
//! variables the caller names (the image, the run, the configured `env`), never the
//! approver tokens, webhook secrets or cloud credentials of the process that starts
//! them. The child leads its own process group; at its timeout the whole group is
//! killed, and so is anything it left running when it exits. Output is kept as a
//! bounded tail (the end is where failures are), however much the command writes.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::error::{Error, Result};

/// Makes this process non-dumpable (Linux `PR_SET_DUMPABLE` 0): other processes of the
/// same user, test commands included, can no longer read its `/proc/<pid>/environ`
/// (where the secrets it was started with stay) or its memory, nor attach a debugger.
/// Root can still; run Baton as an ordinary user. Also turns off core dumps, which
/// would hold the same secrets. Called first thing by `baton` and every function.
pub fn protect_this_process() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl with PR_SET_DUMPABLE takes plain integers and changes only this
    // process's dumpable flag; a failure leaves it as it was.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
    }
}

/// What to run and with what.
#[derive(Debug, Clone)]
pub struct Command {
    pub program: String,
    pub args: Vec<String>,
    /// The child's whole environment besides `PATH`.
    pub env: Vec<(String, String)>,
    pub workdir: PathBuf,
    pub timeout: Duration,
    /// Bytes of output kept (the last ones).
    pub output_limit: usize,
}

/// How a command ended.
#[derive(Debug)]
pub struct Finished {
    /// `None` when it was killed at its timeout.
    pub status: Option<ExitStatus>,
    /// The last `output_limit` bytes of stdout and stderr, in the order written, with a
    /// note of how much was cut before them.
    pub output: String,
}

/// The `PATH` a child gets: the parent's (not a secret), or the usual default.
fn path() -> String {
    std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into())
}

/// The program to start: a bare name is looked up on `path` here, so the child starts
/// by `posix_spawn` (the standard library falls back to a `fork` of the whole server,
/// copying its page tables, when it must search a `PATH` it was given). A name not
/// found is passed on and fails to start with the system's error.
fn resolve(program: &str, path: &str) -> std::path::PathBuf {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if !program.contains('/') {
            let found = std::env::split_paths(path)
                .map(|d| d.join(program))
                .find(|p| {
                    std::fs::metadata(p)
                        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                });
            if let Some(found) = found {
                return found;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    program.into()
}

/// The last `limit` bytes written, and how many came before them: output of any length
/// in bounded memory.
#[derive(Debug, Default)]
pub struct Tail {
    bytes: VecDeque<u8>,
    cut: u64,
    limit: usize,
}

impl Tail {
    pub fn new(limit: usize) -> Tail {
        Tail {
            limit,
            ..Tail::default()
        }
    }

    pub fn push(&mut self, chunk: &[u8]) {
        self.bytes.extend(chunk);
        let over = self.bytes.len().saturating_sub(self.limit);
        if over > 0 {
            self.bytes.drain(..over);
            self.cut = self.cut.saturating_add(over as u64);
        }
    }

    /// The kept bytes as text, after a note of how many were cut.
    pub fn text(&self) -> String {
        let (a, b) = self.bytes.as_slices();
        let mut all = Vec::with_capacity(a.len() + b.len());
        all.extend_from_slice(a);
        all.extend_from_slice(b);
        let text = String::from_utf8_lossy(&all).into_owned();
        if self.cut == 0 {
            text
        } else {
            format!("[… {} bytes cut …]\n{text}", self.cut)
        }
    }
}

async fn drain(mut from: impl AsyncRead + Unpin, tail: Arc<Mutex<Tail>>) {
    let mut buf = [0u8; 8192];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => tail
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(&buf[..n]),
        }
    }
}

/// Kills every process of the group `pgid` leads (already gone is fine).
fn kill_group(pgid: u32) {
    #[cfg(unix)]
    {
        let Ok(pgid) = libc::pid_t::try_from(pgid) else {
            return;
        };
        if pgid > 1 {
            // SAFETY: killpg takes plain integers; a group that no longer exists is ESRCH.
            unsafe {
                libc::killpg(pgid, libc::SIGKILL);
            }
        }
    }
    #[cfg(not(unix))]
    let _ = pgid;
}

/// Kills the group when dropped (a cancelled stage leaves nothing running).
struct GroupGuard(Option<u32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            kill_group(pgid);
        }
    }
}

/// Runs a command to completion or its timeout; see the module documentation.
pub async fn run(cmd: &Command) -> Result<Finished> {
    let path = path();
    let mut c = tokio::process::Command::new(resolve(&cmd.program, &path));
    c.args(&cmd.args)
        .current_dir(&cmd.workdir)
        .env_clear()
        .env("PATH", &path)
        .envs(cmd.env.iter().cloned())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    #[cfg(unix)]
    c.process_group(0);
    let mut child = c.spawn().map_err(|e| {
        Error::permanent(
            format!("command {:?} (in {})", cmd.program, cmd.workdir.display()),
            format!("cannot start: {e}"),
        )
    })?;
    let guard = GroupGuard(child.id());
    let tail = Arc::new(Mutex::new(Tail::new(cmd.output_limit)));
    let readers = [
        child
            .stdout
            .take()
            .map(|s| tokio::spawn(drain(s, tail.clone()))),
        child
            .stderr
            .take()
            .map(|s| tokio::spawn(drain(s, tail.clone()))),
    ];
    let status = match tokio::time::timeout(cmd.timeout, child.wait()).await {
        Ok(status) => Some(status.map_err(|e| Error::transient("wait for command", e))?),
        Err(_) => None,
    };
    // Timed out, or exited leaving children behind: nothing of the group outlives it.
    if let Some(pgid) = guard.0 {
        kill_group(pgid);
    }
    if status.is_none() {
        let _ = child.wait().await;
    }
    for r in readers.into_iter().flatten() {
        // The pipes close once the group is gone; a reader that still hangs (a
        // grandchild that left the group) is abandoned, not waited for.
        if tokio::time::timeout(Duration::from_secs(5), r)
            .await
            .is_err()
        {
            tracing::warn!(program = %cmd.program, "command output still open after the command ended; ignored");
        }
    }
    let output = tail.lock().unwrap_or_else(|p| p.into_inner()).text();
    Ok(Finished { status, output })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, timeout: Duration, limit: usize) -> Command {
        Command {
            program: "sh".into(),
            args: vec!["-c".into(), script.into()],
            env: vec![("BATON_APP".into(), "web".into())],
            workdir: std::env::temp_dir(),
            timeout,
            output_limit: limit,
        }
    }

    #[test]
    fn bare_names_are_looked_up_on_the_given_path() {
        let found = resolve("sh", "/no/such/dir:/usr/bin:/bin");
        assert!(found.is_absolute() && found.ends_with("sh"), "{found:?}");
        assert_eq!(
            resolve("no-such-program-here", "/usr/bin:/bin"),
            std::path::PathBuf::from("no-such-program-here")
        );
        assert_eq!(
            resolve("./run.sh", "/usr/bin"),
            std::path::PathBuf::from("./run.sh")
        );
        // A directory or a file without execute permission is not a program.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("tool")).unwrap();
        std::fs::write(dir.path().join("data"), "x").unwrap();
        let p = dir.path().display().to_string();
        assert_eq!(resolve("tool", &p), std::path::PathBuf::from("tool"));
        assert_eq!(resolve("data", &p), std::path::PathBuf::from("data"));
    }

    #[test]
    fn tail_keeps_the_last_bytes() {
        let mut t = Tail::new(4);
        t.push(b"abc");
        t.push(b"defg");
        assert_eq!(t.text(), "[… 3 bytes cut …]\ndefg");
    }

    #[tokio::test]
    async fn the_environment_is_cleared() {
        // The test process has variables of its own (cargo sets CARGO_MANIFEST_DIR);
        // none of them reaches the child.
        assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
        let f = run(&sh("env", Duration::from_secs(10), 65536))
            .await
            .unwrap();
        assert!(f.status.is_some_and(|s| s.success()));
        assert!(!f.output.contains("CARGO_MANIFEST_DIR"), "{}", f.output);
        assert!(f.output.contains("BATON_APP=web"), "{}", f.output);
        let names: Vec<&str> = f
            .output
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, _)| k))
            .filter(|k| !["PWD", "SHLVL", "_", "OLDPWD"].contains(k))
            .collect();
        assert_eq!(names.len(), 2, "only PATH and BATON_APP: {names:?}");
    }

    #[tokio::test]
    async fn a_timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("still-alive");
        let script = format!(
            "(sleep 2; touch {}) & echo started; sleep 30",
            marker.display()
        );
        let f = run(&sh(&script, Duration::from_millis(500), 65536))
            .await
            .unwrap();
        assert!(f.status.is_none(), "timed out");
        assert!(f.output.contains("started"));
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(
            !marker.exists(),
            "the background child was killed with the group"
        );
    }

    #[tokio::test]
    async fn output_is_bounded_to_the_tail() {
        let f = run(&sh(
            "head -c 3000000 /dev/zero | tr '\\0' x; echo; echo the-end",
            Duration::from_secs(20),
            65536,
        ))
        .await
        .unwrap();
        assert!(f.output.len() < 65536 + 64, "{}", f.output.len());
        assert!(f.output.ends_with("the-end\n"));
        assert!(f.output.starts_with("[… "), "says what was cut");
    }
}
