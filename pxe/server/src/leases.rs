//! The lease store (full mode): fixed addresses for the contract's nodes, a pool for the rest,
//! persisted as an append-only log of JSON lines (`leases.log` in the state directory), each
//! line `fdatasync`ed before the OFFER or ACK that depends on it is sent. On start the log is
//! replayed and compacted. So a restart loses no lease, and an address promised to one MAC is
//! never promised to another while that promise lasts.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ServerError;

/// The lease log file name.
pub const LEASE_LOG: &str = "leases.log";

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
}

/// Seconds since the epoch.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl LeaseStore {
    /// Opens (replays and compacts) the log in `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Self, ServerError> {
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
        // Compact: rewrite the current view, then swap it in atomically.
        let tmp = state_dir.join(format!("{LEASE_LOG}.tmp"));
        {
            let mut t = File::create(&tmp).map_err(io)?;
            for l in by_mac.values() {
                let mut s = serde_json::to_string(l).unwrap_or_default();
                s.push('\n');
                t.write_all(s.as_bytes()).map_err(io)?;
            }
            t.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, &path).map_err(io)?;
        if let Ok(d) = File::open(state_dir) {
            let _ = d.sync_all();
        }
        let log = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io)?;
        let mut by_ip = HashMap::new();
        for l in by_mac.values() {
            if l.state != LeaseState::Released {
                by_ip.insert(l.ip, l.mac.clone());
            }
        }
        Ok(Self {
            by_mac,
            by_ip,
            log,
            path,
        })
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
        if let Some(l) = self.by_mac.get(mac) {
            let ip = u32::from(l.ip);
            if (first..=last).contains(&ip)
                && !reserved(l.ip)
                && self.holder(l.ip, now).is_none_or(|h| h == mac)
            {
                return Some(l.ip);
            }
        }
        // Never-used addresses first, then lapsed ones (oldest first).
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

    /// Records (and syncs) a lease. Refuses to give an address another MAC holds.
    pub fn record(&mut self, lease: Lease) -> Result<(), ServerError> {
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
        self.log.sync_data().map_err(io)?;
        if let Some(old) = self.by_mac.get(&lease.mac) {
            if old.ip != lease.ip && self.by_ip.get(&old.ip) == Some(&lease.mac) {
                self.by_ip.remove(&old.ip);
            }
        }
        if lease.state == LeaseState::Released {
            if self.by_ip.get(&lease.ip) == Some(&lease.mac) {
                self.by_ip.remove(&lease.ip);
            }
        } else {
            self.by_ip.insert(lease.ip, lease.mac.clone());
        }
        self.by_mac.insert(lease.mac.clone(), lease);
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
}
