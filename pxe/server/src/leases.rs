//! The lease store (full mode): fixed addresses for the contract's nodes, a pool for the rest,
//! persisted as an append-only log of JSON lines (`leases.log` in the state directory).
//!
//! The rule: **an address acknowledged to one MAC is never promised to another while that
//! lease lasts, across restarts and power cuts.** So a bound lease (an ACK) is `fdatasync`ed
//! before the ACK is sent, and the store refuses to record an address another MAC holds. An
//! OFFER's hold is written but not synced: a power cut that loses it costs nothing, because
//! the client's REQUEST for it is checked against the store again (and NAKed if the address
//! went to someone else meanwhile), and no ACK ever rests on an unsynced line.
//!
//! A batch of ACKs may share one `fdatasync` ([`LeaseStore::record_batched`], then
//! [`LeaseStore::sync_batch`] before any of them is sent): the DHCP listener records every
//! REQUEST that arrived together, syncs once, then sends their ACKs, so the rule holds and a
//! burst of clients costs one sync per batch instead of one per client.
//!
//! The log is compacted (the current view written to `leases.log.tmp`, synced, renamed over
//! the log, the directory synced) on open and, while serving, whenever it holds more than
//! [`COMPACT_MIN_LINES`] lines and four times as many lines as leases; a crash at any point of
//! that leaves either the old log or the new one, each holding every lease.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ServerError;

/// The lease log file name.
pub const LEASE_LOG: &str = "leases.log";
/// The log is compacted while serving once it holds more lines than this (and four times as
/// many lines as leases).
pub const COMPACT_MIN_LINES: usize = 4096;
/// A lapsed pool lease (or a released one) is forgotten at compaction this long after it
/// lapsed (until then its MAC gets the same address back when it is free).
pub const FORGET_AFTER_SECS: u64 = 86_400;

/// Offered (held briefly for the REQUEST) or bound (ACKed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseState {
    /// Offered, not yet requested.
    Offered,
    /// Acknowledged.
    Bound,
    /// Released by the client (the address may go to another MAC).
    Released,
}

/// One lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Client MAC, `aa:bb:…`.
    pub mac: String,
    /// Address.
    pub ip: Ipv4Addr,
    /// Unix seconds when it lapses.
    pub expires: u64,
    /// State.
    pub state: LeaseState,
    /// The contract node, when the MAC is one.
    pub node: Option<String>,
}

/// Leases by MAC plus the append-only log.
#[derive(Debug)]
pub struct LeaseStore {
    by_mac: HashMap<String, Lease>,
    by_ip: HashMap<Ipv4Addr, String>,
    log: File,
    path: PathBuf,
    dir: PathBuf,
    /// Lines in the log now.
    lines: usize,
    /// Compact when `lines` passes this (and 4× the leases).
    compact_min_lines: usize,
    /// Bytes in the log now, and up to which byte it is known synced.
    written: u64,
    synced: u64,
    compactions: u64,
    /// A bound or released line written by [`Self::record_batched`] waits for its sync.
    batch_pending: bool,
    /// Per pool range, where the search for a never-used address starts (see
    /// [`Self::pick_pool_address`]); forgotten whenever an address leaves `by_ip`.
    pool_hints: std::cell::RefCell<HashMap<(u32, u32), u32>>,
}

/// Seconds since the epoch.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Which MAC holds each address: among the unreleased leases naming it, the one that lasts
/// longest (the store never lets two MACs hold one address unexpired at once, so that is the
/// holder when there is one; the others lapsed).
fn index_by_ip(by_mac: &HashMap<String, Lease>) -> HashMap<Ipv4Addr, String> {
    let mut best: HashMap<Ipv4Addr, (u64, String)> = HashMap::new();
    for l in by_mac.values() {
        if l.state == LeaseState::Released {
            continue;
        }
        let e = best.entry(l.ip).or_insert((l.expires, l.mac.clone()));
        if l.expires > e.0 || (l.expires == e.0 && l.mac < e.1) {
            *e = (l.expires, l.mac.clone());
        }
    }
    best.into_iter().map(|(ip, (_, mac))| (ip, mac)).collect()
}

impl LeaseStore {
    /// Opens (replays and compacts) the log in `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Self, ServerError> {
        Self::open_with(state_dir, COMPACT_MIN_LINES)
    }

    /// [`Self::open`], compacting while serving past `compact_min_lines` lines.
    pub fn open_with(state_dir: &Path, compact_min_lines: usize) -> Result<Self, ServerError> {
        let path = state_dir.join(LEASE_LOG);
        let io = |e: std::io::Error| ServerError::State {
            path: path.clone(),
            message: e.to_string(),
        };
        let mut by_mac: HashMap<String, Lease> = HashMap::new();
        if path.exists() {
            let f = File::open(&path).map_err(io)?;
            for line in BufReader::new(f).lines() {
                let line = line.map_err(io)?;
                // A torn last line (crash mid-write) is skipped; every earlier line was synced.
                if let Ok(l) = serde_json::from_str::<Lease>(&line) {
                    by_mac.insert(l.mac.clone(), l);
                }
            }
        }
        let by_ip = index_by_ip(&by_mac);
        // A placeholder handle until the first compaction opens the real log.
        let log = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io)?;
        let mut store = Self {
            by_mac,
            by_ip,
            log,
            path,
            dir: state_dir.to_path_buf(),
            lines: 0,
            compact_min_lines,
            written: 0,
            synced: 0,
            compactions: 0,
            batch_pending: false,
            pool_hints: std::cell::RefCell::new(HashMap::new()),
        };
        store.compact()?;
        store.compactions = 0;
        Ok(store)
    }

    /// Rewrites the log as the current view (dropping leases long lapsed and leases whose
    /// address another MAC holds now), atomically: temp file, sync, rename, directory sync.
    fn compact(&mut self) -> Result<(), ServerError> {
        let io = |e: std::io::Error| ServerError::State {
            path: self.path.clone(),
            message: e.to_string(),
        };
        let now = now_unix();
        let by_ip = &self.by_ip;
        self.by_mac.retain(|mac, l| {
            let superseded = by_ip.get(&l.ip).is_some_and(|h| h != mac);
            let forgotten = l.node.is_none()
                && (l.state == LeaseState::Released || l.expires <= now)
                && l.expires.saturating_add(FORGET_AFTER_SECS) <= now;
            l.node.is_some() || !(superseded || forgotten)
        });
        self.by_ip = index_by_ip(&self.by_mac);
        self.pool_hints.borrow_mut().clear();
        let tmp = self.dir.join(format!("{LEASE_LOG}.tmp"));
        let mut bytes = 0u64;
        {
            let mut t = File::create(&tmp).map_err(io)?;
            let mut all: Vec<&Lease> = self.by_mac.values().collect();
            all.sort_by(|a, b| a.mac.cmp(&b.mac));
            let mut text = String::new();
            for l in all {
                text.push_str(&serde_json::to_string(l).unwrap_or_default());
                text.push('\n');
            }
            t.write_all(text.as_bytes()).map_err(io)?;
            t.sync_all().map_err(io)?;
            bytes += text.len() as u64;
        }
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        self.log = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.path)
            .map_err(io)?;
        let before = self.lines;
        self.lines = self.by_mac.len();
        self.written = bytes;
        self.synced = bytes;
        self.batch_pending = false;
        self.compactions += 1;
        if before > 0 {
            tracing::info!(
                lines_before = before,
                lines = self.lines,
                "lease log compacted"
            );
        }
        Ok(())
    }

    /// How many times the log was compacted while serving.
    pub fn compactions(&self) -> u64 {
        self.compactions
    }

    /// All leases.
    pub fn all(&self) -> Vec<Lease> {
        let mut v: Vec<Lease> = self.by_mac.values().cloned().collect();
        v.sort_by_key(|l| u32::from(l.ip));
        v
    }

    /// The lease of a MAC.
    pub fn get(&self, mac: &str) -> Option<&Lease> {
        self.by_mac.get(mac)
    }

    /// Releases `mac`'s lease at once, on the operator's word that the machine is gone
    /// (retired, or its name given to another MAC): a released line, synced before this
    /// returns, so its address may go to another MAC from now on, across restarts. The lease
    /// as it was, or `None` when the MAC holds none (or only a released one): nothing written.
    pub fn release(&mut self, mac: &str) -> Result<Option<Lease>, ServerError> {
        let Some(old) = self.by_mac.get(mac).cloned() else {
            return Ok(None);
        };
        if old.state == LeaseState::Released {
            return Ok(None);
        }
        self.record(Lease {
            expires: now_unix().min(old.expires),
            state: LeaseState::Released,
            node: None,
            ..old.clone()
        })?;
        Ok(Some(old))
    }

    /// Which MAC holds `ip` (an unexpired, unreleased lease), if any.
    pub fn holder(&self, ip: Ipv4Addr, now: u64) -> Option<&str> {
        let mac = self.by_ip.get(&ip)?;
        let l = self.by_mac.get(mac)?;
        (l.ip == ip && l.state != LeaseState::Released && l.expires > now).then_some(mac.as_str())
    }

    /// Picks an address for a MAC not in the contract: its current address if it has one, else
    /// the first pool address that nobody holds and no contract node owns.
    pub fn pick_pool_address(
        &self,
        mac: &str,
        range: (Ipv4Addr, Ipv4Addr),
        reserved: &dyn Fn(Ipv4Addr) -> bool,
        now: u64,
    ) -> Option<Ipv4Addr> {
        let (first, last) = (u32::from(range.0), u32::from(range.1));
        if first > last {
            return None;
        }
        if let Some(l) = self.by_mac.get(mac) {
            let ip = u32::from(l.ip);
            if (first..=last).contains(&ip)
                && !reserved(l.ip)
                && self.holder(l.ip, now).is_none_or(|h| h == mac)
            {
                return Some(l.ip);
            }
        }
        // Never-used addresses first, from where the last search left off: every address
        // before the hint has a holder in `by_ip` (or was reserved), and a removal from
        // `by_ip` forgets the hints, so a burst of new clients does not rescan the pool.
        let hint = self
            .pool_hints
            .borrow()
            .get(&(first, last))
            .copied()
            .unwrap_or(first)
            .clamp(first, last);
        for n in hint..=last {
            let ip = Ipv4Addr::from(n);
            if reserved(ip) {
                continue;
            }
            match self.by_ip.get(&ip).and_then(|m| self.by_mac.get(m)) {
                None => {
                    self.pool_hints.borrow_mut().insert((first, last), n);
                    return Some(ip);
                }
                Some(l) if l.ip != ip || l.state == LeaseState::Released => return Some(ip),
                Some(_) => {}
            }
        }
        // Then lapsed ones, oldest first.
        let mut lapsed: Option<(u64, Ipv4Addr)> = None;
        for n in first..=last {
            let ip = Ipv4Addr::from(n);
            if reserved(ip) {
                continue;
            }
            match self.by_ip.get(&ip).and_then(|m| self.by_mac.get(m)) {
                None => return Some(ip),
                Some(l) if l.ip != ip || l.state == LeaseState::Released => return Some(ip),
                Some(l) if l.expires <= now => {
                    if lapsed.is_none_or(|(e, _)| l.expires < e) {
                        lapsed = Some((l.expires, ip));
                    }
                }
                Some(_) => {}
            }
        }
        lapsed.map(|(_, ip)| ip)
    }

    /// Records a lease: a bound or released one synced before this returns, an offered one
    /// only written (see the module's rule). Refuses to give an address another MAC holds.
    pub fn record(&mut self, lease: Lease) -> Result<(), ServerError> {
        self.record_with(lease, true)
    }

    /// [`Self::record`], but a bound or released lease is only written: it is durable once
    /// [`Self::sync_batch`] returns, and the caller sends no ACK resting on it before that.
    pub fn record_batched(&mut self, lease: Lease) -> Result<(), ServerError> {
        self.record_with(lease, false)
    }

    /// Syncs what [`Self::record_batched`] wrote (one `fdatasync` for the batch), then
    /// compacts the log if it grew past its bound. A no-op when nothing is waiting.
    pub fn sync_batch(&mut self) -> Result<(), ServerError> {
        if !self.batch_pending {
            return Ok(());
        }
        let io = |e: std::io::Error| ServerError::State {
            path: self.path.clone(),
            message: e.to_string(),
        };
        self.log.sync_data().map_err(io)?;
        self.synced = self.written;
        self.batch_pending = false;
        if self.lines > self.compact_min_lines && self.lines > 4 * self.by_mac.len() {
            self.compact()?;
        }
        Ok(())
    }

    fn record_with(&mut self, lease: Lease, sync_now: bool) -> Result<(), ServerError> {
        let now = now_unix();
        if lease.state != LeaseState::Released {
            if let Some(h) = self.holder(lease.ip, now) {
                if h != lease.mac {
                    return Err(ServerError::AddressTaken {
                        ip: lease.ip,
                        holder: h.to_string(),
                        asker: lease.mac,
                    });
                }
            }
        }
        let mut line = serde_json::to_string(&lease).unwrap_or_default();
        line.push('\n');
        let io = |e: std::io::Error| ServerError::State {
            path: self.path.clone(),
            message: e.to_string(),
        };
        self.log.write_all(line.as_bytes()).map_err(io)?;
        self.written += line.len() as u64;
        self.lines += 1;
        if lease.state != LeaseState::Offered {
            if sync_now {
                self.log.sync_data().map_err(io)?;
                self.synced = self.written;
            } else {
                self.batch_pending = true;
            }
        }
        if let Some(old) = self.by_mac.get(&lease.mac) {
            if old.ip != lease.ip && self.by_ip.get(&old.ip) == Some(&lease.mac) {
                self.by_ip.remove(&old.ip);
                self.pool_hints.borrow_mut().clear();
            }
        }
        if lease.state == LeaseState::Released {
            if self.by_ip.get(&lease.ip) == Some(&lease.mac) {
                self.by_ip.remove(&lease.ip);
                self.pool_hints.borrow_mut().clear();
            }
        } else {
            self.by_ip.insert(lease.ip, lease.mac.clone());
        }
        let durable = lease.state != LeaseState::Offered && sync_now;
        self.by_mac.insert(lease.mac.clone(), lease);
        if durable && self.lines > self.compact_min_lines && self.lines > 4 * self.by_mac.len() {
            // Only after a synced line: an offer never triggers the fsyncs of a compaction.
            self.compact()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(mac: &str, ip: [u8; 4], state: LeaseState) -> Lease {
        Lease {
            mac: mac.into(),
            ip: Ipv4Addr::from(ip),
            expires: now_unix() + 600,
            state,
            node: None,
        }
    }

    #[test]
    fn leases_survive_reopen_and_are_never_shared() {
        let dir = tempfile::tempdir().expect("tempdir");
        let range = (Ipv4Addr::new(10, 0, 0, 10), Ipv4Addr::new(10, 0, 0, 11));
        let no = |_: Ipv4Addr| false;
        {
            let mut s = LeaseStore::open(dir.path()).expect("open");
            let ip = s
                .pick_pool_address("a", range, &no, now_unix())
                .expect("ip");
            assert_eq!(ip, Ipv4Addr::new(10, 0, 0, 10));
            s.record(lease("a", [10, 0, 0, 10], LeaseState::Bound))
                .expect("record");
            assert!(s
                .record(lease("b", [10, 0, 0, 10], LeaseState::Offered))
                .is_err());
        }
        let s = LeaseStore::open(dir.path()).expect("reopen");
        assert_eq!(s.get("a").map(|l| l.ip), Some(Ipv4Addr::new(10, 0, 0, 10)));
        assert_eq!(
            s.pick_pool_address("b", range, &no, now_unix()),
            Some(Ipv4Addr::new(10, 0, 0, 11))
        );
        assert_eq!(
            s.pick_pool_address("a", range, &no, now_unix()),
            Some(Ipv4Addr::new(10, 0, 0, 10))
        );
        let reserved = |ip: Ipv4Addr| ip == Ipv4Addr::new(10, 0, 0, 11);
        assert_eq!(s.pick_pool_address("c", range, &reserved, now_unix()), None);
    }
    /// Cuts the log where a power cut may cut it: after the last synced byte.
    fn power_cut(dir: &Path, s: LeaseStore) {
        let synced = s.synced;
        drop(s);
        let f = OpenOptions::new()
            .write(true)
            .open(dir.join(LEASE_LOG))
            .expect("log");
        f.set_len(synced).expect("truncate");
    }

    #[test]
    fn a_batch_is_durable_once_synced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = LeaseStore::open(dir.path()).expect("open");
        s.record_batched(lease("a", [10, 0, 0, 10], LeaseState::Bound))
            .expect("a");
        s.record_batched(lease("b", [10, 0, 0, 11], LeaseState::Bound))
            .expect("b");
        assert!(
            s.record_batched(lease("c", [10, 0, 0, 11], LeaseState::Bound))
                .is_err(),
            "a batch still refuses an address another MAC holds"
        );
        s.sync_batch().expect("sync");
        power_cut(dir.path(), s);
        let s = LeaseStore::open(dir.path()).expect("reopen");
        assert_eq!(s.get("a").map(|l| l.ip), Some(Ipv4Addr::new(10, 0, 0, 10)));
        assert_eq!(s.get("b").map(|l| l.ip), Some(Ipv4Addr::new(10, 0, 0, 11)));
        // Unsynced, a batch's lines may be lost: nothing was sent on them.
        let mut s = s;
        s.record_batched(lease("d", [10, 0, 0, 12], LeaseState::Bound))
            .expect("d");
        power_cut(dir.path(), s);
        let s = LeaseStore::open(dir.path()).expect("reopen");
        assert!(s.get("d").is_none());
    }

    #[test]
    fn an_offer_lost_in_a_power_cut_never_lets_an_acked_address_go_to_another_mac() {
        let dir = tempfile::tempdir().expect("tempdir");
        let range = (Ipv4Addr::new(10, 0, 0, 10), Ipv4Addr::new(10, 0, 0, 13));
        let no = |_: Ipv4Addr| false;
        let mut s = LeaseStore::open(dir.path()).expect("open");
        s.record(lease("a", [10, 0, 0, 10], LeaseState::Offered))
            .expect("offer a");
        s.record(lease("a", [10, 0, 0, 10], LeaseState::Bound))
            .expect("ack a");
        s.record(lease("b", [10, 0, 0, 11], LeaseState::Offered))
            .expect("offer b");
        s.record(lease("c", [10, 0, 0, 12], LeaseState::Bound))
            .expect("ack c");
        s.record(lease("d", [10, 0, 0, 13], LeaseState::Offered))
            .expect("offer d, never synced");
        assert!(s.written > s.synced, "the last offer is not synced");
        power_cut(dir.path(), s);
        let mut s = LeaseStore::open(dir.path()).expect("reopen");
        // Every ACK survived; b's offer (synced along with c's ACK) too; d's is gone.
        assert_eq!(s.holder(Ipv4Addr::new(10, 0, 0, 10), now_unix()), Some("a"));
        assert_eq!(s.holder(Ipv4Addr::new(10, 0, 0, 12), now_unix()), Some("c"));
        assert_eq!(s.holder(Ipv4Addr::new(10, 0, 0, 11), now_unix()), Some("b"));
        assert!(s.get("d").is_none());
        // The acked addresses go to nobody else; d's lost offer may go to x: d never got an ACK,
        // and its REQUEST for .13 now finds x there (pxe-server NAKs it).
        for ip in [[10, 0, 0, 10], [10, 0, 0, 12]] {
            assert!(s.record(lease("x", ip, LeaseState::Offered)).is_err());
        }
        assert_eq!(
            s.pick_pool_address("x", range, &no, now_unix()),
            Some(Ipv4Addr::new(10, 0, 0, 13))
        );
        s.record(lease("x", [10, 0, 0, 13], LeaseState::Bound))
            .expect("x");
        assert!(s
            .record(lease("d", [10, 0, 0, 13], LeaseState::Bound))
            .is_err());
    }

    #[test]
    fn power_cuts_at_any_point_keep_every_ack_and_never_two_holders() {
        // A small pool, six MACs, offers, ACKs and releases in a fixed pseudo-random order, a
        // power cut (the log cut after its last synced byte) every few steps.
        let dir = tempfile::tempdir().expect("tempdir");
        let range = (Ipv4Addr::new(10, 0, 0, 10), Ipv4Addr::new(10, 0, 0, 13));
        let no = |_: Ipv4Addr| false;
        let macs = ["m0", "m1", "m2", "m3", "m4", "m5"];
        let mut acked: HashMap<&str, Ipv4Addr> = HashMap::new();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut rnd = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let mut s = LeaseStore::open_with(dir.path(), 16).expect("open");
        for step in 0..400 {
            let mac = macs[rnd(6) as usize];
            let now = now_unix();
            match rnd(4) {
                0 | 1 => {
                    if let Some(ip) = s.pick_pool_address(mac, range, &no, now) {
                        let state = if rnd(2) == 0 {
                            LeaseState::Offered
                        } else {
                            LeaseState::Bound
                        };
                        if s.record(lease(mac, ip.octets(), state)).is_ok()
                            && state == LeaseState::Bound
                        {
                            acked.insert(mac, ip);
                        }
                    }
                }
                2 => {
                    if let Some(ip) = acked.remove(mac) {
                        s.record(lease(mac, ip.octets(), LeaseState::Released))
                            .expect("release");
                    }
                }
                _ => {
                    if step % 3 == 0 {
                        power_cut(dir.path(), s);
                        s = LeaseStore::open_with(dir.path(), 16).expect("reopen");
                    }
                }
            }
            for (m, ip) in &acked {
                assert_eq!(
                    s.holder(*ip, now_unix()),
                    Some(*m),
                    "step {step}: {m}'s acked {ip}"
                );
            }
            let mut holders = HashMap::new();
            for l in s.all() {
                if s.holder(l.ip, now_unix()) == Some(l.mac.as_str()) {
                    assert!(
                        holders.insert(l.ip, l.mac.clone()).is_none(),
                        "two holders of {}",
                        l.ip
                    );
                }
            }
        }
    }

    #[test]
    fn renewals_past_the_threshold_compact_the_log_while_serving_and_a_restart_sees_every_lease() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join(LEASE_LOG);
        let lines = || std::fs::read_to_string(&log).expect("log").lines().count();
        let mut s = LeaseStore::open_with(dir.path(), 100).expect("open");
        let macs: Vec<String> = (0..10).map(|i| format!("52:54:00:00:00:{i:02x}")).collect();
        let mut most = 0;
        for round in 0..50 {
            for (i, m) in macs.iter().enumerate() {
                let mut l = lease(m, [10, 0, 1, i as u8 + 10], LeaseState::Bound);
                l.expires += round;
                s.record(l).expect("renew");
            }
            most = most.max(lines());
        }
        assert!(s.compactions() >= 3, "{} compactions", s.compactions());
        assert!(most <= 101, "the log grew to {most} lines");
        assert!(lines() <= 101);
        assert!(!dir.path().join(format!("{LEASE_LOG}.tmp")).exists());
        drop(s);
        let s = LeaseStore::open(dir.path()).expect("reopen");
        for (i, m) in macs.iter().enumerate() {
            let l = s.get(m).expect("every lease after the restart");
            assert_eq!(l.ip, Ipv4Addr::new(10, 0, 1, i as u8 + 10));
            assert_eq!(l.state, LeaseState::Bound);
            assert!(l.expires >= now_unix() + 600 + 49 - 5, "the last renewal");
        }
    }

    #[test]
    fn a_released_machines_address_goes_to_its_replacement_and_stays_there_after_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ip = Ipv4Addr::new(10, 0, 0, 12);
        let node = |mac: &str| Lease {
            node: Some("node02".into()),
            ..lease(mac, [10, 0, 0, 12], LeaseState::Bound)
        };
        let mut s = LeaseStore::open(dir.path()).expect("open");
        s.record(node("52:54:00:00:00:01"))
            .expect("the first machine");
        // Its replacement (same name and address, another MAC) is refused while it holds it.
        let e = s.record(node("52:54:00:00:00:02")).expect_err("taken");
        assert!(matches!(e, ServerError::AddressTaken { .. }), "{e}");

        let was = s.release("52:54:00:00:00:01").expect("release");
        assert_eq!(was.map(|l| l.ip), Some(ip));
        assert_eq!(s.holder(ip, now_unix()), None);
        assert_eq!(
            s.release("52:54:00:00:00:01").expect("again"),
            None,
            "idempotent"
        );
        assert_eq!(s.release("52:54:00:00:00:99").expect("unknown"), None);
        s.record(node("52:54:00:00:00:02"))
            .expect("the replacement");
        drop(s);

        let s = LeaseStore::open(dir.path()).expect("reopen");
        assert_eq!(s.holder(ip, now_unix()), Some("52:54:00:00:00:02"));
        assert!(s
            .get("52:54:00:00:00:01")
            .is_none_or(|l| l.state == LeaseState::Released && l.node.is_none()));
    }
}
