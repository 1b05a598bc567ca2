//! Free space on the data disk: a node starts only when its data directory has room.
//!
//! The rule: a storage error stops Raft for good (openraft 0.9's core quits on it, and RocksDB
//! turns read-only after a failed write), so the server exits non-zero and its service manager
//! starts it again (`Restart=on-failure`, the same path as a power loss, which replays the log
//! from the disk). A disk that is still full would make that restart fail at once, again and
//! again, until systemd's start limit gives up on the unit — or, worse, fail opening RocksDB,
//! which reads as a damaged directory (exit 2, never restarted). So before it binds its ports a
//! node checks that [`RESERVE`] bytes can be written in its data directory, and while they
//! cannot it waits (a log line every [`LOG_EVERY`], sd-notify `STATUS=`) with its ports
//! closed, so peers and clients see a node that is down and go elsewhere. Once an operator (or
//! a log rotation, or a purge) frees space, the node starts by itself.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// Bytes that must be writable in the data directory before a node starts (RocksDB writes a
/// new write-ahead log, manifest and options file when it opens, and the first appends follow).
pub const RESERVE: usize = 8 << 20;
/// How often a waiting node tries again.
pub const RETRY_EVERY: Duration = Duration::from_millis(500);
/// How often a waiting node says so in its log.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

const PROBE_FILE: &str = ".space-probe";

/// Whether an error's text says the disk is full (ENOSPC or a quota: RocksDB passes the OS
/// error on as text).
pub fn is_out_of_space(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    t.contains("no space left on device") || t.contains("disk quota exceeded")
}

fn is_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    ) || is_out_of_space(&e.to_string())
}

/// Writes, syncs and removes [`RESERVE`] bytes in `dir`: `Ok(true)` when they fit, `Ok(false)`
/// when the disk is full, `Err` on any other error (the caller's checks report those).
pub fn probe(dir: &Path) -> std::io::Result<bool> {
    let path = dir.join(PROBE_FILE);
    let res = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&path)?;
        let chunk = vec![0u8; 1 << 20];
        for _ in 0..RESERVE / chunk.len() {
            f.write_all(&chunk)?;
        }
        f.sync_all()
    })();
    let _ = std::fs::remove_file(&path);
    match res {
        Ok(()) => Ok(true),
        Err(e) if is_full(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Waits until [`probe`] finds room in `dir` (forever: the node cannot run without it). A
/// directory that does not exist yet is not checked (it is created by the start that follows).
/// Blocking: call it where blocking is fine.
pub fn wait_for_space(dir: &Path) {
    if !dir.is_dir() {
        return;
    }
    let since = Instant::now();
    let mut said: Option<Instant> = None;
    loop {
        match probe(dir) {
            Ok(true) | Err(_) => break,
            Ok(false) => {}
        }
        if said.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            let waited = since.elapsed().as_secs();
            tracing::warn!(
                data_dir = %dir.display(),
                reserve_mib = RESERVE >> 20,
                waited_s = waited,
                "the data disk is full: waiting for {} MiB of free space in {} before starting (free space on that filesystem; this node stays down meanwhile)",
                RESERVE >> 20,
                dir.display()
            );
            let _ = sd_notify::notify(
                false,
                &[sd_notify::NotifyState::Status(&format!(
                    "waiting for free space in {} ({waited} s)",
                    dir.display()
                ))],
            );
            said = Some(Instant::now());
        }
        std::thread::sleep(RETRY_EVERY);
    }
    if said.is_some() {
        tracing::info!(data_dir = %dir.display(), waited_s = since.elapsed().as_secs(), "free space is back; starting");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_disks_are_told_by_their_error_text() {
        assert!(is_out_of_space(
            "IO error: No space left on device: While appending to file: db/000012.log"
        ));
        assert!(is_out_of_space("Disk quota exceeded (os error 122)"));
        assert!(!is_out_of_space("IO error: Permission denied"));
    }

    #[test]
    fn a_directory_with_room_passes_and_keeps_no_probe() {
        let d = tempfile::tempdir().expect("tempdir");
        assert!(probe(d.path()).expect("probe"));
        assert!(!d.path().join(PROBE_FILE).exists());
    }
}
