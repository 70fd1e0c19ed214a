//! Who holds a claim. Local workers are `host/pid/start-time`; a claim whose owner is a
//! process on this host that no longer exists is void at once, so a `baton serve` killed
//! mid-stage resumes as soon as it restarts instead of waiting out the lease. Owners on
//! other hosts (or without this form, like Lambda request ids) are trusted until their
//! lease expires.

use std::sync::OnceLock;

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// Start time of a process in clock ticks since boot (field 22 of `/proc/<pid>/stat`).
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// A crash injected right after a side effect, for the fault suite: when the
/// environment variable `BATON_FAIL_POINT` is `<stage>:<point>` and this is that point
/// (`claimed`, `outputs_fixed`, `applied`, `appended`, `published`, `recorded`,
/// `acked`), the process kills itself with SIGKILL, as `kill -9` would: no unwinding, no
/// flush, no cleanup. Unset (always, outside the fault suite) it is one load of a value
/// read once.
pub fn fail_point(stage: &str, point: &str) {
    static WANT: OnceLock<Option<(String, String)>> = OnceLock::new();
    let want = WANT.get_or_init(|| {
        let v = std::env::var("BATON_FAIL_POINT").ok()?;
        let (s, p) = v.split_once(':')?;
        Some((s.to_string(), p.to_string()))
    });
    if let Some((s, p)) = want
        && s == stage
        && p == point
    {
        eprintln!("BATON_FAIL_POINT {stage}:{point}: killing this process");
        #[cfg(unix)]
        // SAFETY: kill takes plain integers; signalling ourselves cannot fail usefully.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        std::process::abort();
    }
}

/// This process's owner id.
pub fn instance_id() -> String {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let pid = std::process::id();
        format!("{}/{pid}/{}", hostname(), start_time(pid).unwrap_or(0))
    })
    .clone()
}

/// Whether `owner` names a process on this host that has exited.
pub fn is_dead(owner: &str) -> bool {
    let mut parts = owner.split('/');
    let (Some(host), Some(pid), Some(start)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let (Ok(pid), Ok(start)) = (pid.parse::<u32>(), start.parse::<u64>()) else {
        return false;
    };
    if host != hostname() || start == 0 || !std::path::Path::new("/proc/self/stat").exists() {
        return false;
    }
    start_time(pid) != Some(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_finished_one_is_dead() {
        assert!(!is_dead(&instance_id()));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let start = start_time(pid);
        child.wait().unwrap();
        if let Some(start) = start {
            assert!(is_dead(&format!("{}/{pid}/{start}", hostname())));
        }
        assert!(!is_dead("lambda-request-0f1e2d"));
        assert!(!is_dead("elsewhere/1/1"));
    }
}
