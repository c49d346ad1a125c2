//! Processes: is a recorded pid still our node, signals, and waiting for
//! processes that are not our children to exit.

use std::path::Path;
use std::time::{Duration, Instant};

/// Sends `signal` to `pid`; false if there is no such process.
pub(crate) fn signal(pid: u32, signal: libc::c_int) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid, signal) == 0 }
}

/// The process's command line (NUL separators turned into spaces), if
/// /proc knows it.
fn cmdline(pid: u32) -> Option<String> {
    let bytes = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        String::from_utf8_lossy(&bytes)
            .replace('\0', " ")
            .trim_end()
            .to_string(),
    )
}

/// Whether `pid` runs and is not a zombie. Without /proc (not Linux), only
/// whether the pid exists.
fn running(pid: u32) -> bool {
    if Path::new("/proc/self/stat").exists() {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            // The state follows the command name in parentheses.
            Ok(stat) => stat
                .rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
                .unwrap_or(true),
            Err(_) => false,
        }
    } else {
        signal(pid, 0)
    }
}

/// Whether `pid` is a running raft-kv started with `config` (a recorded
/// pid may have been reused by an unrelated process since).
pub(crate) fn node_alive(pid: u32, config: &Path) -> bool {
    if !running(pid) {
        return false;
    }
    match cmdline(pid) {
        // A process on its way out has an empty command line while it still
        // exists (and holds the node's port and data directory): still
        // alive if its name says raft-kv.
        Some(cmd) if cmd.is_empty() => std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|comm| comm.trim() == "raft-kv"),
        Some(cmd) => {
            let name = config
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            cmd.contains("raft-kv") && cmd.contains(&name)
        }
        None => true,
    }
}

/// Whether `pid` is a running xtask (a foreground `cargo xtask cluster`).
pub(crate) fn xtask_alive(pid: u32) -> bool {
    if pid == std::process::id() || !running(pid) {
        return false;
    }
    match cmdline(pid) {
        Some(cmd) => cmd.contains("xtask") && cmd.contains("cluster"),
        None => true,
    }
}

/// Polls `alive` for every pid until none is alive or `timeout` passes;
/// returns those still alive.
pub(crate) fn wait_all(
    pids: &[u32],
    timeout: Duration,
    mut alive: impl FnMut(u32) -> bool,
) -> Vec<u32> {
    let deadline = Instant::now() + timeout;
    loop {
        let left: Vec<u32> = pids.iter().copied().filter(|&p| alive(p)).collect();
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The last `lines` lines of a log file, for error messages.
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            if all.is_empty() {
                format!("    ({} is empty)", path.display())
            } else {
                all[start..]
                    .iter()
                    .map(|l| format!("    {l}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            }
        }
        Err(e) => format!("    (cannot read {}: {e})", path.display()),
    }
}
