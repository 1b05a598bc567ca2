//! Boot events that survive a restart: the event type, and its log on disk — one JSON line per
//! event in `<state-dir>/events/events.log`, rotated at [`LogLimits::file_bytes`] into
//! `events.log.1` … `events.log.<files-1>` (the oldest dropped), and read back whole on start.
//!
//! The rule, durability: events are written by one thread of their own ([`EventLog`]), in
//! sequence order, each as soon as it is recorded (`write(2)`, into the page cache), so a
//! restart or a crash of pxe-server loses nothing that had reached that thread, and a clean
//! stop (SIGTERM) loses nothing at all ([`EventLog::flush`]). The fsync that makes them
//! survive a power loss is paid where an event is worth it: a node's phase report (whose `202`
//! waits for it, [`EventLog::sync`]) and every `enroll` event (an enrollment, a refusal, a
//! token used twice) are synced at once; everything else — DHCP, TFTP, HTTP fetches, several
//! per boot and many per second under load — at most [`SYNC_INTERVAL`] later, in one fsync
//! for all of them. Several events waiting at once share one fsync.
//!
//! On start, every file is read, oldest first; a line that does not parse is skipped and
//! counted (a crash in the middle of a write leaves a torn last line), and a torn tail of the
//! current file is cut off before the first append, so the next event starts on a line of its
//! own. Sequence numbers go on from the highest one read: they only ever increase, across
//! restarts too, as long as the log is kept.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::ServerError;

/// A boot event: something the server saw, or a phase a node reported.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BootEvent {
    /// Increasing sequence number (for `GET /v1/events?since=SEQ`), across restarts too.
    pub seq: u64,
    /// Unix milliseconds.
    pub at_ms: u64,
    /// RFC 3339 UTC timestamp of `at_ms`.
    pub at: String,
    /// The contract node, when known.
    pub node: Option<String>,
    /// The MAC, when known.
    pub mac: Option<String>,
    /// The client address, when known.
    pub ip: Option<String>,
    /// `server` (seen by pxe-server) or `node` (reported by the node).
    pub source: String,
    /// `dhcp`, `tftp`, `ipxe-script`, `kernel`, `initrd`, `overlay`, `enroll-initrd`,
    /// `enroll`, `unknown-mac`, or a first-boot phase name reported by the node.
    pub phase: String,
    /// `started`, `ok`, `failed`, `ignored` (unknown MACs under `ignore`) or `security` (an
    /// enrollment token presented again by another key).
    pub status: String,
    /// Free text.
    pub detail: String,
    /// The bundle version (its manifest's sha256) a script, kernel or initrd came from.
    pub bundle: Option<String>,
}

impl BootEvent {
    /// Is this event worth an fsync of its own: a node's report, or anything about enrollment
    /// (security events included)?
    pub fn is_durable(&self) -> bool {
        self.source == "node" || self.phase == "enroll" || self.status == "security"
    }
}

/// The log's directory under the state directory.
pub const EVENTS_DIR: &str = "events";
/// The file being appended to.
pub const CURRENT_FILE: &str = "events.log";
/// Events not worth an fsync of their own are synced at most this long after they were
/// written.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(5);

/// How big the log may grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    /// A file is rotated before it would pass this size.
    pub file_bytes: u64,
    /// Files kept, the current one included (at least 2).
    pub files: usize,
}

/// 8 MiB × 4 files: about 100,000 events (a boot makes 20-40), 32 MiB on disk at most.
pub const DEFAULT_LIMITS: LogLimits = LogLimits {
    file_bytes: 8 << 20,
    files: 4,
};

/// What the log did, for `/metrics`.
#[derive(Debug, Default)]
pub struct LogStats {
    /// Bytes in all files now.
    pub bytes: AtomicU64,
    /// Files now.
    pub files: AtomicU64,
    /// Events written since start.
    pub written: AtomicU64,
    /// fsyncs since start.
    pub fsyncs: AtomicU64,
    /// Rotations since start.
    pub rotations: AtomicU64,
    /// Failed writes, fsyncs or rotations (the event stays in memory; the log says why).
    pub errors: AtomicU64,
    /// Events read back at start.
    pub reloaded: AtomicU64,
    /// Lines skipped at start (torn or unreadable).
    pub skipped: AtomicU64,
}

/// What was read back at start.
#[derive(Debug, Default)]
pub struct Reloaded {
    /// Every event read, oldest first.
    pub events: Vec<BootEvent>,
    /// Lines that did not parse.
    pub skipped: u64,
}

enum Msg {
    Line(String, bool),
    Sync(tokio::sync::oneshot::Sender<bool>),
    Flush(mpsc::Sender<bool>),
}

/// The writer of the log (a thread of its own); cheap to call from anywhere.
#[derive(Debug)]
pub struct EventLog {
    tx: Option<mpsc::Sender<Msg>>,
    dir: PathBuf,
    /// What it did.
    pub stats: Arc<LogStats>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Msg::Line(..) => "Line",
            Msg::Sync(_) => "Sync",
            Msg::Flush(_) => "Flush",
        })
    }
}

fn state_err(path: &Path, what: &str, e: std::io::Error) -> ServerError {
    ServerError::State {
        path: path.to_path_buf(),
        message: format!("{what}: {e}"),
    }
}

/// `events.log`, `events.log.1`, … (index 0 is the current file).
fn file_path(dir: &Path, i: usize) -> PathBuf {
    if i == 0 {
        dir.join(CURRENT_FILE)
    } else {
        dir.join(format!("{CURRENT_FILE}.{i}"))
    }
}

impl EventLog {
    /// Opens the log in `<state_dir>/events` (made 0700), reads every event back, and starts
    /// the writer thread. Blocking: call it off the runtime.
    pub fn open(state_dir: &Path) -> Result<(Self, Reloaded), ServerError> {
        Self::open_with(state_dir, DEFAULT_LIMITS)
    }

    /// [`EventLog::open`] with other limits (tests rotate small files).
    pub fn open_with(state_dir: &Path, limits: LogLimits) -> Result<(Self, Reloaded), ServerError> {
        let dir = state_dir.join(EVENTS_DIR);
        crate::cluster_ca::private_dir(&dir)?;
        let limits = LogLimits {
            file_bytes: limits.file_bytes.max(1),
            files: limits.files.max(2),
        };
        let mut reloaded = Reloaded::default();
        // Oldest first; files beyond the limit (from a larger limit before) are read too and
        // dropped at the next rotation.
        let mut present: Vec<usize> = (0..64).filter(|i| file_path(&dir, *i).is_file()).collect();
        present.sort_unstable_by(|a, b| b.cmp(a));
        let mut bytes = 0u64;
        for i in &present {
            let path = file_path(&dir, *i);
            let data = std::fs::read(&path).map_err(|e| state_err(&path, "cannot read", e))?;
            let complete = match data.iter().rposition(|b| *b == b'\n') {
                Some(p) => p + 1,
                None => 0,
            };
            for line in data[..complete].split(|b| *b == b'\n') {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                match serde_json::from_slice::<BootEvent>(line) {
                    Ok(e) => reloaded.events.push(e),
                    Err(_) => reloaded.skipped += 1,
                }
            }
            if complete < data.len() {
                // A torn last line: skipped, and cut off so the next append starts clean.
                reloaded.skipped += 1;
                if *i == 0 {
                    let f = std::fs::OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(|e| state_err(&path, "cannot open", e))?;
                    f.set_len(complete as u64)
                        .and_then(|()| f.sync_all())
                        .map_err(|e| state_err(&path, "cannot cut the torn last line", e))?;
                }
            }
            bytes += if *i == 0 {
                complete as u64
            } else {
                data.len() as u64
            };
        }
        let current = file_path(&dir, 0);
        let file = open_append(&current).map_err(|e| state_err(&current, "cannot open", e))?;
        let stats = Arc::new(LogStats::default());
        stats.bytes.store(bytes, Ordering::Relaxed);
        stats
            .files
            .store(present.len().max(1) as u64, Ordering::Relaxed);
        stats
            .reloaded
            .store(reloaded.events.len() as u64, Ordering::Relaxed);
        stats.skipped.store(reloaded.skipped, Ordering::Relaxed);
        let size = std::fs::metadata(&current).map(|m| m.len()).unwrap_or(0);
        let (tx, rx) = mpsc::channel();
        let mut writer = Writer {
            dir: dir.clone(),
            limits,
            file,
            size,
            dirty: false,
            last_sync: Instant::now(),
            stats: stats.clone(),
            last_error_log: None,
        };
        std::thread::Builder::new()
            .name("event-log".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| state_err(&dir, "cannot start the event log thread", e))?;
        Ok((
            Self {
                tx: Some(tx),
                dir,
                stats,
            },
            reloaded,
        ))
    }

    /// A log that keeps nothing (unit tests of the state).
    pub fn disabled() -> Self {
        Self {
            tx: None,
            dir: PathBuf::new(),
            stats: Arc::default(),
        }
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Queues `e` for writing (never blocks); fsynced at once when [`BootEvent::is_durable`].
    /// Call in sequence order.
    pub fn append(&self, e: &BootEvent) {
        let Some(tx) = &self.tx else { return };
        match serde_json::to_string(e) {
            Ok(mut line) => {
                line.push('\n');
                let _ = tx.send(Msg::Line(line, e.is_durable()));
            }
            Err(err) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(seq = e.seq, error = %err, "cannot encode an event for the log");
            }
        }
    }

    /// Waits until every event appended before is on disk (fsynced); `false` when that failed
    /// (the log said why) or the log is disabled.
    pub async fn sync(&self) -> bool {
        let Some(tx) = &self.tx else { return false };
        let (done, wait) = tokio::sync::oneshot::channel();
        if tx.send(Msg::Sync(done)).is_err() {
            return false;
        }
        wait.await.unwrap_or(false)
    }

    /// Blocks until every event appended before is written and fsynced, at most `deadline`
    /// (a clean stop calls it).
    pub fn flush(&self, deadline: Duration) -> bool {
        let Some(tx) = &self.tx else { return false };
        let (done, wait) = mpsc::channel();
        if tx.send(Msg::Flush(done)).is_err() {
            return false;
        }
        wait.recv_timeout(deadline).unwrap_or(false)
    }
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

struct Writer {
    dir: PathBuf,
    limits: LogLimits,
    file: std::fs::File,
    size: u64,
    dirty: bool,
    last_sync: Instant,
    stats: Arc<LogStats>,
    last_error_log: Option<Instant>,
}

/// The most messages handled before the writer looks at its fsync duties again.
const BATCH: usize = 4096;

impl Writer {
    fn run(&mut self, rx: mpsc::Receiver<Msg>) {
        loop {
            let wait = if self.dirty {
                SYNC_INTERVAL.saturating_sub(self.last_sync.elapsed())
            } else {
                Duration::from_secs(3600)
            };
            let first = match rx.recv_timeout(wait) {
                Ok(m) => Some(m),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.sync();
                    return;
                }
            };
            let mut want_sync = false;
            let mut waiters = Vec::new();
            let mut flushers = Vec::new();
            let mut next = first;
            let mut n = 0;
            while let Some(m) = next.take() {
                match m {
                    Msg::Line(text, durable) => {
                        self.write(&text);
                        want_sync |= durable;
                    }
                    Msg::Sync(w) => {
                        want_sync = true;
                        waiters.push(w);
                    }
                    Msg::Flush(w) => {
                        want_sync = true;
                        flushers.push(w);
                    }
                }
                n += 1;
                if n < BATCH {
                    next = rx.try_recv().ok();
                }
            }
            let due = self.dirty && self.last_sync.elapsed() >= SYNC_INTERVAL;
            let ok = if want_sync || due { self.sync() } else { true };
            for w in waiters {
                let _ = w.send(ok);
            }
            for w in flushers {
                let _ = w.send(ok);
            }
        }
    }

    fn write(&mut self, line: &str) {
        let len = line.len() as u64;
        if self.size > 0 && self.size + len > self.limits.file_bytes {
            if let Err(e) = self.rotate() {
                self.failed("cannot rotate the event log", &e);
            }
        }
        match self.file.write_all(line.as_bytes()) {
            Ok(()) => {
                self.size += len;
                self.dirty = true;
                self.stats.bytes.fetch_add(len, Ordering::Relaxed);
                self.stats.written.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => self.failed("cannot write to the event log", &e),
        }
    }

    /// fsync of the current file; `true` when nothing was left unsynced.
    fn sync(&mut self) -> bool {
        if !self.dirty {
            return true;
        }
        match self.file.sync_data() {
            Ok(()) => {
                self.dirty = false;
                self.last_sync = Instant::now();
                self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(e) => {
                self.failed("cannot fsync the event log", &e);
                false
            }
        }
    }

    /// The current file synced and renamed to `.1`, `.1` to `.2`, …, the oldest removed, a new
    /// current file, the directory synced.
    fn rotate(&mut self) -> std::io::Result<()> {
        self.file.sync_data()?;
        self.dirty = false;
        let last = self.limits.files - 1;
        let mut removed = 0u64;
        for i in (last..64).rev() {
            let p = file_path(&self.dir, i);
            if let Ok(m) = std::fs::metadata(&p) {
                removed += m.len();
                std::fs::remove_file(&p)?;
            }
        }
        for i in (0..last).rev() {
            let from = file_path(&self.dir, i);
            if from.is_file() {
                std::fs::rename(&from, file_path(&self.dir, i + 1))?;
            }
        }
        self.file = open_append(&file_path(&self.dir, 0))?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        self.size = 0;
        self.stats.rotations.fetch_add(1, Ordering::Relaxed);
        let _ = self
            .stats
            .bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some(b.saturating_sub(removed))
            });
        let files = (0..64)
            .filter(|i| file_path(&self.dir, *i).is_file())
            .count();
        self.stats.files.store(files as u64, Ordering::Relaxed);
        Ok(())
    }

    fn failed(&mut self, what: &str, e: &std::io::Error) {
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        // One line per minute: a full disk would otherwise log once per event.
        if self
            .last_error_log
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
        {
            self.last_error_log = Some(Instant::now());
            tracing::warn!(dir = %self.dir.display(), error = %e, "{what}; events are kept in memory only until it works again (is the state directory's disk full?)");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ev(seq: u64, phase: &str, source: &str) -> BootEvent {
        BootEvent {
            seq,
            at_ms: 1_700_000_000_000 + seq,
            at: String::new(),
            node: Some("node01".into()),
            mac: Some("52:54:00:aa:00:01".into()),
            ip: None,
            source: source.into(),
            phase: phase.into(),
            status: "ok".into(),
            detail: "x".repeat(50),
            bundle: None,
        }
    }

    #[test]
    fn events_come_back_after_reopening_and_a_torn_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let (log, r) = EventLog::open(dir.path()).unwrap();
        assert!(r.events.is_empty());
        for i in 1..=5 {
            log.append(&ev(i, "dhcp", "server"));
        }
        assert!(log.flush(Duration::from_secs(5)));
        drop(log);
        let path = dir.path().join(EVENTS_DIR).join(CURRENT_FILE);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(br#"{"seq":6,"at_ms":1,"at":"#).unwrap();
        drop(f);
        let (log, r) = EventLog::open(dir.path()).unwrap();
        assert_eq!(
            r.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        assert_eq!(r.skipped, 1);
        // The torn tail was cut: the next event is a line of its own.
        log.append(&ev(6, "kernel", "server"));
        assert!(log.flush(Duration::from_secs(5)));
        drop(log);
        let (_log, r) = EventLog::open(dir.path()).unwrap();
        assert_eq!(r.events.len(), 6);
        assert_eq!(r.skipped, 0);
        assert_eq!(r.events[5], ev(6, "kernel", "server"));
    }

    #[test]
    fn the_log_rotates_and_keeps_its_newest_files() {
        let dir = tempfile::tempdir().unwrap();
        let limits = LogLimits {
            file_bytes: 1000,
            files: 3,
        };
        let (log, _) = EventLog::open_with(dir.path(), limits).unwrap();
        for i in 1..=100 {
            log.append(&ev(i, "dhcp", "server"));
        }
        assert!(log.flush(Duration::from_secs(5)));
        let d = dir.path().join(EVENTS_DIR);
        let mut names: Vec<String> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["events.log", "events.log.1", "events.log.2"]);
        let total: u64 = names
            .iter()
            .map(|n| std::fs::metadata(d.join(n)).unwrap().len())
            .sum();
        assert!(total <= 3000, "{total}");
        assert_eq!(log.stats.bytes.load(Ordering::Relaxed), total);
        assert!(log.stats.rotations.load(Ordering::Relaxed) > 0);
        drop(log);
        let (_log, r) = EventLog::open_with(dir.path(), limits).unwrap();
        let seqs: Vec<u64> = r.events.iter().map(|e| e.seq).collect();
        // The newest events, in order, ending at the last one.
        assert_eq!(seqs.last(), Some(&100));
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
        assert!(seqs.len() < 100 && seqs.len() > 10, "{}", seqs.len());
    }

    #[tokio::test]
    async fn a_durable_event_is_synced_when_sync_returns() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = EventLog::open(dir.path()).unwrap();
        log.append(&ev(1, "dhcp", "server"));
        assert_eq!(log.stats.fsyncs.load(Ordering::Relaxed), 0);
        log.append(&ev(2, "configure", "node"));
        assert!(log.sync().await);
        assert!(log.stats.fsyncs.load(Ordering::Relaxed) >= 1);
        assert_eq!(log.stats.written.load(Ordering::Relaxed), 2);
    }
}
