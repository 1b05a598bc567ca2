//! What every step shares: the loaded contract and *self*, the step error (which decides the
//! exit code), the URLs of and clients for the node's services, waits with deadlines and
//! backoff, progress reporting, and done-markers.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use plasmacloud_contract::{
    Contract, ContractError, IdentitySources, NodeSpec, ENROLL_CA_FILE, ENROLL_TOKEN_FILE,
    NODE_PKI_DIR,
};
use plasmacloud_pki::tls::TlsMaterial;
use plasmacloud_pki::{Credentials, TlsFiles};
use plasmacloud_store_client::StoreClient;
use rand::Rng;

use crate::exit;
use crate::node_args::NodeArgs;

/// Why a step failed; the variant decides the exit code.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The configuration is wrong (exit 2): retrying will not help; fix what the message names.
    #[error("configuration: {0}")]
    Config(String),
    /// Something is not there yet or failed transiently (exit 75): systemd retries.
    #[error("retry later: {0}")]
    Retry(String),
}

impl StepError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            StepError::Config(_) => exit::CONFIG,
            StepError::Retry(_) => exit::RETRY,
        }
    }
}

impl From<ContractError> for StepError {
    fn from(e: ContractError) -> Self {
        StepError::Config(e.to_string())
    }
}

/// Result alias.
pub type StepResult<T> = Result<T, StepError>;

/// Which Raft store a step talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// Chainfire (config KV).
    Chainfire,
    /// FlareDB (KV / time series).
    Flaredb,
}

impl Store {
    /// Lowercase name, as in unit and directory names.
    pub fn name(self) -> &'static str {
        match self {
            Store::Chainfire => "chainfire",
            Store::Flaredb => "flaredb",
        }
    }
}

/// The loaded contract, *self*, and the node-side paths.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// The validated contract.
    pub contract: Contract,
    /// This node's entry.
    pub me: NodeSpec,
    /// The flags.
    pub args: NodeArgs,
}

impl Ctx {
    /// Loads the contract and finds self (by `--node`, the kernel command line, the identity
    /// file, or a local MAC).
    pub fn load(args: &NodeArgs) -> StepResult<Self> {
        let contract = Contract::load(&args.cluster)?;
        let sources = IdentitySources::from_system(Path::new("/"), args.node.clone());
        let me = contract.find_self(&sources)?.clone();
        Ok(Self {
            contract,
            me,
            args: args.clone(),
        })
    }

    /// Every service port speaks mutual TLS (the trust design): always `https`.
    pub fn scheme(&self) -> &'static str {
        "https"
    }

    /// This node's key, certificate and CA on its data disk (`<state-dir>/pki/`).
    pub fn node_credentials(&self) -> Credentials {
        Credentials::node(self.args.state_dir.join(NODE_PKI_DIR))
    }

    /// Where this boot's enrollment initrd put the token and the CA (`<etc-dir>/enroll`).
    pub fn enroll_dir(&self) -> PathBuf {
        self.args.etc_dir.join("enroll")
    }

    /// This node's TLS material, for every client of the chain.
    pub fn tls(&self) -> StepResult<TlsMaterial> {
        let creds = self.node_credentials();
        TlsMaterial::load(&TlsFiles::from(&creds)).map_err(|e| {
            StepError::Config(format!(
                "this node's certificate ({}): {e}; firstboot-enroll.service must run first",
                creds.cert_path().display()
            ))
        })
    }

    /// API URL of `store` on `node`.
    pub fn api_url(&self, store: Store, node: &NodeSpec) -> String {
        let addr = match store {
            Store::Chainfire => node.chainfire_api(),
            Store::Flaredb => node.flaredb_api(),
        };
        format!("{}://{addr}", self.scheme())
    }

    /// The local IAM's base URL.
    pub fn iam_url(&self) -> String {
        format!("{}://{}", self.scheme(), self.me.iam_api())
    }

    /// Raft address of `store` on `node`.
    pub fn raft_addr(&self, store: Store, node: &NodeSpec) -> String {
        match store {
            Store::Chainfire => node.chainfire_raft(),
            Store::Flaredb => node.flaredb_raft(),
        }
    }

    /// A client for `store` over the given nodes' APIs, speaking mTLS as this node.
    pub fn client<'a>(
        &self,
        store: Store,
        nodes: impl IntoIterator<Item = &'a NodeSpec>,
        timeout: Duration,
    ) -> StepResult<StoreClient> {
        let endpoints: Vec<String> = nodes.into_iter().map(|n| self.api_url(store, n)).collect();
        StoreClient::builder(endpoints)
            .timeout(timeout)
            .membership_timeout(Duration::from_secs(120))
            .tls(self.tls()?)
            .build()
            .map_err(|e| StepError::Config(format!("{} client: {e}", store.name())))
    }

    /// An HTTP client (for IAM and `/health`) speaking mTLS as this node. Its deadline is
    /// longer than IAM's own FlareDB deadline (10 s), so a slow answer is seen, not cut off.
    pub fn http_client(&self) -> StepResult<reqwest::Client> {
        self.tls()?
            .reqwest_builder()
            .map_err(|e| StepError::Config(format!("http client: {e}")))?
            .timeout(Duration::from_secs(15))
            .build()
            .map_err(|e| StepError::Config(format!("http client: {e}")))
    }

    /// A client for `store` on this node only.
    pub fn local_client(&self, store: Store) -> StepResult<StoreClient> {
        let me = self.me.clone();
        self.client(store, [&me], Duration::from_secs(5))
    }

    /// A client for `store` over every other initial voter (the members a joiner asks).
    pub fn peers_client(&self, store: Store) -> StepResult<StoreClient> {
        let peers = self.other_voters();
        if peers.is_empty() {
            return Err(StepError::Config(format!(
                "{} is the only voter; there is no cluster to join",
                self.me.name
            )));
        }
        self.client(store, &peers, Duration::from_secs(5))
    }

    /// The contract's initial voters other than this node.
    pub fn other_voters(&self) -> Vec<NodeSpec> {
        self.contract
            .voters()
            .into_iter()
            .filter(|n| n.name != self.me.name)
            .cloned()
            .collect()
    }

    /// Is this node the seed (bootstraps the stores, seeds IAM)?
    pub fn is_seed(&self) -> bool {
        self.contract.is_seed(&self.me.name)
    }

    /// The data directory of `store` on this node.
    pub fn data_dir(&self, store: Store) -> PathBuf {
        self.args.state_dir.join(store.name())
    }

    /// Where the done-markers and reports live: on the persistent data disk, never in /etc
    /// (a netbooted node boots from RAM).
    pub fn firstboot_dir(&self) -> PathBuf {
        self.args.state_dir.join("firstboot")
    }

    /// The done-marker of `step`.
    pub fn marker(&self, step: &str) -> PathBuf {
        self.firstboot_dir().join(format!("{step}.done"))
    }

    /// Writes the done-marker of `step` (atomically) with a small JSON body.
    pub fn mark_done(&self, step: &str, detail: serde_json::Value) -> StepResult<()> {
        let body = serde_json::json!({
            "step": step,
            "node": self.me.name,
            "cluster_id": self.contract.id(),
            "detail": detail,
        });
        write_atomic(&self.marker(step), format!("{body}\n").as_bytes())
    }

    /// Reads the done-marker of `step`, if present and for this cluster.
    pub fn done(&self, step: &str) -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(self.marker(step)).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        (v["cluster_id"] == self.contract.id()).then_some(v)
    }

    /// Reports progress: sd-notify `STATUS=`, a log line, and a best-effort phase event to the
    /// boot server's management listener (never blocking the step). The report goes over
    /// HTTPS trusting the cluster CA, authenticated by this node's certificate once it has
    /// one, else by this boot's enrollment token.
    pub async fn progress(&self, phase: &str, status: &str, detail: &str) {
        let line = format!(
            "{phase}: {status}{}{detail}",
            if detail.is_empty() { "" } else { ": " }
        );
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Status(&line)]);
        tracing::info!(node = %self.me.name, phase, status, detail, "progress");
        let Some((client, token)) = self.report_client() else {
            return; // no CA yet: nothing to report to that we could trust
        };
        let url = format!(
            "{}/v1/nodes/{}/events",
            self.contract.management_url(),
            self.me.name
        );
        let body = serde_json::json!({"phase": phase, "status": status, "detail": detail});
        let mut req = client
            .post(url)
            .timeout(Duration::from_millis(500))
            .json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        // Best effort: the boot server may be absent (process racks, a rebooted server).
        let _ = tokio::time::timeout(Duration::from_millis(600), req.send()).await;
    }

    /// The client phase reports go out with, and the bearer token when there is no
    /// certificate yet. `None` when this node has neither a certificate nor an enrollment CA.
    fn report_client(&self) -> Option<(reqwest::Client, Option<String>)> {
        if let Ok(m) = self.tls() {
            let c = m.reqwest_builder().ok()?.build().ok()?;
            return Some((c, None));
        }
        let dir = self.enroll_dir();
        let ca = std::fs::read_to_string(dir.join(ENROLL_CA_FILE)).ok()?;
        let token = std::fs::read_to_string(dir.join(ENROLL_TOKEN_FILE)).ok()?;
        let c = plasmacloud_pki::tls::reqwest_builder_trusting(&ca)
            .ok()?
            .build()
            .ok()?;
        Some((c, Some(token.trim().to_string())))
    }
}

/// Writes `path` via a temporary file and a rename, creating parent directories.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> StepResult<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    let fail = |what: &str, e: std::io::Error| {
        StepError::Retry(format!(
            "cannot {what} {}: {e} (is the disk full or read-only?)",
            path.display()
        ))
    };
    std::fs::create_dir_all(parent).map_err(|e| fail("create the directory of", e))?;
    let tmp = parent.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    std::fs::write(&tmp, bytes).map_err(|e| fail("write", e))?;
    if let Ok(f) = std::fs::File::open(&tmp) {
        let _ = f.sync_all();
    }
    std::fs::rename(&tmp, path).map_err(|e| fail("rename into", e))
}

/// The longest pause between attempts. Every wait here is for a peer on the same LAN (a
/// seed's store, a health endpoint), which answers a poll in milliseconds, while a longer cap
/// overshoots a wait by up to the cap (seconds at first boot).
pub const BACKOFF_CAP: Duration = Duration::from_millis(500);

/// Exponential backoff with jitter: 100 ms doubling to [`BACKOFF_CAP`], ±25 %.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            next: Duration::from_millis(100),
        }
    }
}

impl Backoff {
    /// The next pause (and advances).
    pub fn pause(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(BACKOFF_CAP);
        let jitter = rand::thread_rng().gen_range(0.75..1.25);
        base.mul_f64(jitter)
    }
}

/// What an attempt of [`retry_until`] decided.
pub enum Attempt<T> {
    /// Done.
    Done(T),
    /// Not yet; the string says what is awaited (for the deadline's message).
    NotYet(String),
}

/// Runs `attempt` until it is done, fails with a configuration error, or `deadline` passes
/// (then [`StepError::Retry`] naming what was awaited). Backs off between attempts.
pub async fn retry_until<T, F, Fut>(what: &str, deadline: Duration, attempt: F) -> StepResult<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = StepResult<Attempt<T>>>,
{
    retry(None, what, deadline, attempt).await
}

/// How often a step that keeps waiting says what it waits for.
pub const SAY_WAITING_EVERY: Duration = Duration::from_secs(10);

/// A progress detail cut to at most 1000 bytes (on a character boundary).
pub fn cap_detail(mut line: String) -> String {
    if line.len() > 1000 {
        let mut cut = 997;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
        line.push_str("...");
    }
    line
}

impl Ctx {
    /// [`retry_until`], saying what it waits for (`attempt N, waiting for WHAT: WHY`) as
    /// `step`'s progress — the unit's status line and a boot event — at the first failed
    /// attempt and every [`SAY_WAITING_EVERY`] after, so a slow step is never silent.
    pub async fn retry_until<T, F, Fut>(
        &self,
        step: &str,
        what: &str,
        deadline: Duration,
        attempt: F,
    ) -> StepResult<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = StepResult<Attempt<T>>>,
    {
        retry(Some((self, step)), what, deadline, attempt).await
    }
}

async fn retry<T, F, Fut>(
    say: Option<(&Ctx, &str)>,
    what: &str,
    deadline: Duration,
    mut attempt: F,
) -> StepResult<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = StepResult<Attempt<T>>>,
{
    let start = Instant::now();
    let mut backoff = Backoff::default();
    let mut attempts = 0u32;
    let mut said: Option<Instant> = None;
    loop {
        attempts += 1;
        let last = match attempt().await {
            Ok(Attempt::Done(v)) => return Ok(v),
            Ok(Attempt::NotYet(why)) | Err(StepError::Retry(why)) => why,
            Err(e @ StepError::Config(_)) => return Err(e),
        };
        let elapsed = start.elapsed();
        if elapsed >= deadline {
            return Err(StepError::Retry(format!(
                "gave up after {:.0?} waiting for {what}: {last}",
                elapsed
            )));
        }
        tracing::debug!(what, last = %last, "not yet");
        if let Some((ctx, step)) = say {
            if said.is_none_or(|t| t.elapsed() >= SAY_WAITING_EVERY) {
                said = Some(Instant::now());
                let line = format!("attempt {attempts}, waiting for {what}: {last}");
                ctx.progress(step, "started", &cap_detail(line)).await;
            }
        }
        tokio::time::sleep(backoff.pause().min(deadline.saturating_sub(elapsed))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_a_cap_with_jitter() {
        let mut b = Backoff::default();
        let first = b.pause();
        assert!(first >= Duration::from_millis(75) && first <= Duration::from_millis(125));
        for _ in 0..20 {
            assert!(b.pause() <= BACKOFF_CAP.mul_f64(1.25));
        }
    }

    #[tokio::test]
    async fn retry_until_names_what_it_waited_for() {
        let e = retry_until::<(), _, _>("the seed", Duration::from_millis(50), || async {
            Ok(Attempt::NotYet("unreachable".into()))
        })
        .await
        .expect_err("must time out");
        let text = e.to_string();
        assert!(text.contains("waiting for the seed: unreachable"), "{text}");
        assert_eq!(e.exit_code(), exit::RETRY);

        let mut n = 0;
        let v = retry_until("three tries", Duration::from_secs(5), || {
            n += 1;
            let done = n >= 3;
            async move {
                Ok(if done {
                    Attempt::Done(7)
                } else {
                    Attempt::NotYet("x".into())
                })
            }
        })
        .await
        .expect("done");
        assert_eq!(v, 7);

        let e = retry_until::<(), _, _>("config", Duration::from_secs(5), || async {
            Err(StepError::Config("bad".into()))
        })
        .await
        .expect_err("config errors end at once");
        assert_eq!(e.exit_code(), exit::CONFIG);
    }
}
