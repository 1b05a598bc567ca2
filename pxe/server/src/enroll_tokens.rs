//! Single-use enrollment tokens: one per boot of a known node, kept hashed on disk.
//!
//! The rules:
//! - a token is 128 random bits, minted when a node's boot script is served, bound to that
//!   node and expiring with the boot's deadline; only its SHA-256 is written, fsynced, to
//!   `enroll/tokens.log` in the state directory (a JSON line per event), so a copy of the state
//!   directory's log yields no usable token;
//! - a token is **burned** (a `use` line, fsynced) before its certificate is signed, so a
//!   crash after signing can never leave it usable a second time;
//! - the same key presenting the same token again (a node whose answer was lost) gets the same
//!   certificate back; any other key is refused, and the refusal names the address and MAC
//!   that used the token first, so the real node can say who took its enrollment;
//! - the log is replayed at start, expired tokens dropped, and rewritten (compacted) at start
//!   and whenever it grows past four times the live records.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::ServerError;

/// The log's file name, under `<state-dir>/enroll/`.
pub const TOKEN_LOG: &str = "tokens.log";

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum Line {
    /// A token was minted.
    Mint {
        hash: String,
        node: String,
        issued: u64,
        expires: u64,
        ip: String,
        mac: String,
    },
    /// A token was burned by a requester presenting a key.
    Use {
        hash: String,
        at: u64,
        ip: String,
        mac: String,
        key_sha256: String,
    },
    /// The certificate signed for a burned token (returned again to the same key).
    Issued {
        hash: String,
        cert_pem: String,
        serial: String,
    },
}

/// Who burned a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Use {
    /// Unix seconds.
    pub at: u64,
    /// The requester's address.
    pub ip: String,
    /// Its MAC as the neighbour table showed it (`-` when not on our L2).
    pub mac: String,
    /// SHA-256 of the public key it presented.
    pub key_sha256: String,
}

/// A token's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The node it was minted for.
    pub node: String,
    /// Unix seconds.
    pub issued: u64,
    /// Unix seconds.
    pub expires: u64,
    /// The address its script was served to.
    pub ip: String,
    /// The MAC of that address.
    pub mac: String,
    /// Burned, by whom.
    pub used: Option<Use>,
    /// The certificate signed for it, once signed.
    pub cert_pem: Option<String>,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Never minted here, or expired long ago.
    Unknown,
    /// Minted, but its deadline passed.
    Expired {
        /// The node it was for.
        node: String,
    },
    /// Minted for another node.
    OtherNode {
        /// The node it was for.
        node: String,
    },
    /// Already used by another key.
    Reused {
        /// The node it was for.
        node: String,
        /// Who used it first.
        first: Use,
    },
}

/// What redeeming a token allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redeemed {
    /// Burned now: sign the CSR, then [`TokenStore::record_issued`].
    Fresh,
    /// The same key redeemed it before; here is the certificate it got.
    Again(String),
    /// The same key burned it before but no certificate was recorded (a crash in between):
    /// sign again.
    Resign,
}

/// The token store.
#[derive(Debug)]
pub struct TokenStore {
    path: PathBuf,
    log: File,
    lines: usize,
    by_hash: HashMap<String, Record>,
}

/// SHA-256 of a token, hex: the only form of a token that is stored.
pub fn token_hash(token: &str) -> String {
    hex::encode(sha2::Sha256::digest(token.trim().as_bytes()))
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ServerError + '_ {
    move |e| ServerError::State {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

impl TokenStore {
    /// Opens (replays, drops expired records, compacts) `<state_dir>/enroll/tokens.log`.
    pub fn open(state_dir: &Path, now: u64) -> Result<Self, ServerError> {
        let dir = state_dir.join("enroll");
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let path = dir.join(TOKEN_LOG);
        let mut by_hash: HashMap<String, Record> = HashMap::new();
        if path.exists() {
            let f = File::open(&path).map_err(io(&path))?;
            for line in BufReader::new(f).lines() {
                let line = line.map_err(io(&path))?;
                // A torn last line (power cut mid-write) is skipped: every earlier one was synced.
                if let Ok(l) = serde_json::from_str::<Line>(&line) {
                    apply(&mut by_hash, l);
                }
            }
        }
        // Keep burned tokens a day past expiry, so a late replay is still named as a reuse.
        by_hash.retain(|_, r| r.expires + 86_400 > now);
        let mut store = Self {
            log: File::open("/dev/null").map_err(io(&path))?,
            path,
            lines: 0,
            by_hash,
        };
        store.compact()?;
        Ok(store)
    }

    /// Rewrites the log with the live records and swaps it in atomically.
    fn compact(&mut self) -> Result<(), ServerError> {
        let tmp = self.path.with_extension("log.tmp");
        let mut lines = 0;
        {
            let mut t = File::create(&tmp).map_err(io(&tmp))?;
            for (hash, r) in &self.by_hash {
                for l in lines_of(hash, r) {
                    let mut s = serde_json::to_string(&l).unwrap_or_default();
                    s.push('\n');
                    t.write_all(s.as_bytes()).map_err(io(&tmp))?;
                    lines += 1;
                }
            }
            t.sync_all().map_err(io(&tmp))?;
        }
        std::fs::rename(&tmp, &self.path).map_err(io(&self.path))?;
        if let Some(d) = self.path.parent().and_then(|p| File::open(p).ok()) {
            let _ = d.sync_all();
        }
        self.log = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(io(&self.path))?;
        self.lines = lines;
        Ok(())
    }

    fn append(&mut self, l: Line) -> Result<(), ServerError> {
        let mut s = serde_json::to_string(&l).unwrap_or_default();
        s.push('\n');
        self.log.write_all(s.as_bytes()).map_err(io(&self.path))?;
        self.log.sync_data().map_err(io(&self.path))?;
        apply(&mut self.by_hash, l);
        self.lines += 1;
        if self.lines > 64 && self.lines > 4 * self.by_hash.len() {
            let now = crate::leases::now_unix();
            self.by_hash.retain(|_, r| r.expires + 86_400 > now);
            self.compact()?;
        }
        Ok(())
    }

    /// Mints a token for `node`, its script served to `ip` (`mac`), valid for `ttl` seconds.
    /// Returns the token; only its hash is written (and synced) before it is returned.
    pub fn mint(
        &mut self,
        node: &str,
        ip: &str,
        mac: &str,
        now: u64,
        ttl: u64,
    ) -> Result<String, ServerError> {
        let mut b = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut b);
        let token = hex::encode(b);
        self.append(Line::Mint {
            hash: token_hash(&token),
            node: node.to_string(),
            issued: now,
            expires: now + ttl,
            ip: ip.to_string(),
            mac: mac.to_string(),
        })?;
        Ok(token)
    }

    /// The record of a token, if known.
    pub fn get(&self, token: &str) -> Option<&Record> {
        self.by_hash.get(&token_hash(token))
    }

    /// Checks `token` for `node` and, when it may be used, burns it (durably) for the key
    /// `key_sha256` presented by `ip`/`mac`.
    pub fn redeem(
        &mut self,
        token: &str,
        node: &str,
        ip: &str,
        mac: &str,
        key_sha256: &str,
        now: u64,
    ) -> Result<Result<Redeemed, Refusal>, ServerError> {
        let hash = token_hash(token);
        let Some(r) = self.by_hash.get(&hash) else {
            return Ok(Err(Refusal::Unknown));
        };
        if r.node != node {
            return Ok(Err(Refusal::OtherNode {
                node: r.node.clone(),
            }));
        }
        if let Some(u) = &r.used {
            if u.key_sha256 == key_sha256 {
                return Ok(Ok(match &r.cert_pem {
                    Some(c) => Redeemed::Again(c.clone()),
                    None => Redeemed::Resign,
                }));
            }
            return Ok(Err(Refusal::Reused {
                node: r.node.clone(),
                first: u.clone(),
            }));
        }
        if r.expires <= now {
            return Ok(Err(Refusal::Expired {
                node: r.node.clone(),
            }));
        }
        self.append(Line::Use {
            hash,
            at: now,
            ip: ip.to_string(),
            mac: mac.to_string(),
            key_sha256: key_sha256.to_string(),
        })?;
        Ok(Ok(Redeemed::Fresh))
    }

    /// Records the certificate signed for a burned token.
    pub fn record_issued(
        &mut self,
        token: &str,
        cert_pem: &str,
        serial: &str,
    ) -> Result<(), ServerError> {
        self.append(Line::Issued {
            hash: token_hash(token),
            cert_pem: cert_pem.to_string(),
            serial: serial.to_string(),
        })
    }

    /// Is `token` a live token of `node` (minted, not expired; used or not)? What phase
    /// reports from a node that is not enrolled yet authenticate with.
    pub fn vouches_for(&self, token: &str, node: &str, now: u64) -> bool {
        self.get(token)
            .is_some_and(|r| r.node == node && r.expires > now)
    }
}

fn apply(by_hash: &mut HashMap<String, Record>, l: Line) {
    match l {
        Line::Mint {
            hash,
            node,
            issued,
            expires,
            ip,
            mac,
        } => {
            by_hash.insert(
                hash,
                Record {
                    node,
                    issued,
                    expires,
                    ip,
                    mac,
                    used: None,
                    cert_pem: None,
                },
            );
        }
        Line::Use {
            hash,
            at,
            ip,
            mac,
            key_sha256,
        } => {
            if let Some(r) = by_hash.get_mut(&hash) {
                r.used.get_or_insert(Use {
                    at,
                    ip,
                    mac,
                    key_sha256,
                });
            }
        }
        Line::Issued { hash, cert_pem, .. } => {
            if let Some(r) = by_hash.get_mut(&hash) {
                r.cert_pem = Some(cert_pem);
            }
        }
    }
}

fn lines_of(hash: &str, r: &Record) -> Vec<Line> {
    let mut v = vec![Line::Mint {
        hash: hash.to_string(),
        node: r.node.clone(),
        issued: r.issued,
        expires: r.expires,
        ip: r.ip.clone(),
        mac: r.mac.clone(),
    }];
    if let Some(u) = &r.used {
        v.push(Line::Use {
            hash: hash.to_string(),
            at: u.at,
            ip: u.ip.clone(),
            mac: u.mac.clone(),
            key_sha256: u.key_sha256.clone(),
        });
    }
    if let Some(c) = &r.cert_pem {
        v.push(Line::Issued {
            hash: hash.to_string(),
            cert_pem: c.clone(),
            serial: String::new(),
        });
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_single_use_survives_restarts_and_is_stored_only_hashed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = 1_000_000;
        let token = {
            let mut s = TokenStore::open(dir.path(), now).expect("open");
            s.mint("node02", "10.0.0.12", "52:54:00:00:00:02", now, 600)
                .expect("mint")
        };
        let log = std::fs::read_to_string(dir.path().join("enroll").join(TOKEN_LOG)).expect("log");
        assert!(
            !log.contains(&token),
            "the token itself must never be written"
        );
        assert!(log.contains(&token_hash(&token)));

        let mut s = TokenStore::open(dir.path(), now + 1).expect("reopen");
        assert_eq!(
            s.redeem(&token, "node03", "10.0.0.13", "-", "k1", now + 1)
                .expect("io"),
            Err(Refusal::OtherNode {
                node: "node02".into()
            })
        );
        assert_eq!(
            s.redeem(
                &token,
                "node02",
                "10.0.0.50",
                "52:54:00:00:00:99",
                "evil",
                now + 2
            )
            .expect("io"),
            Ok(Redeemed::Fresh)
        );
        // The power goes out before the certificate is recorded.
        drop(s);
        let mut s = TokenStore::open(dir.path(), now + 3).expect("reopen");
        match s
            .redeem(
                &token,
                "node02",
                "10.0.0.12",
                "52:54:00:00:00:02",
                "real",
                now + 3,
            )
            .expect("io")
        {
            Err(Refusal::Reused { first, .. }) => {
                assert_eq!(
                    (first.ip.as_str(), first.mac.as_str()),
                    ("10.0.0.50", "52:54:00:00:00:99")
                )
            }
            other => panic!("want Reused, got {other:?}"),
        }
        assert_eq!(
            s.redeem(&token, "node02", "10.0.0.50", "-", "evil", now + 4)
                .expect("io"),
            Ok(Redeemed::Resign)
        );
        s.record_issued(&token, "PEM", "01").expect("issued");
        let mut s = TokenStore::open(dir.path(), now + 5).expect("reopen");
        assert_eq!(
            s.redeem(&token, "node02", "10.0.0.50", "-", "evil", now + 5)
                .expect("io"),
            Ok(Redeemed::Again("PEM".into()))
        );
        assert_eq!(
            s.redeem(
                "0123456789abcdef0123456789abcdef",
                "node02",
                "x",
                "-",
                "k",
                now
            )
            .expect("io"),
            Err(Refusal::Unknown)
        );
    }

    #[test]
    fn an_expired_token_is_refused_and_a_torn_line_is_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = TokenStore::open(dir.path(), 100).expect("open");
        let t = s.mint("node01", "ip", "mac", 100, 10).expect("mint");
        drop(s);
        let path = dir.path().join("enroll").join(TOKEN_LOG);
        let mut f = OpenOptions::new().append(true).open(&path).expect("log");
        f.write_all(b"{\"op\":\"use\",\"hash\":\"tor")
            .expect("torn");
        drop(f);
        let mut s = TokenStore::open(dir.path(), 200).expect("reopen");
        assert!(s.vouches_for(&t, "node01", 105));
        assert!(!s.vouches_for(&t, "node01", 200));
        assert_eq!(
            s.redeem(&t, "node01", "ip", "mac", "k", 200).expect("io"),
            Err(Refusal::Expired {
                node: "node01".into()
            })
        );
    }
}
