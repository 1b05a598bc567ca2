//! Chainfire: the cluster's configuration store — a revisioned key-value store replicated with
//! Raft (the shared core in `plasmacloud-raft`), in the spirit of etcd.
//!
//! Ports: 2379 API, 2380 Raft (2381 reserved for gossip), both mutual TLS with the node's
//! certificate from the cluster CA. Start a node with
//! `chainfire-server --id 1 --data-dir /var/lib/chainfire --api-addr IP:2379 --raft-addr IP:2380
//! --tls-cert pki/node.crt --tls-key pki/node.key --tls-ca pki/ca.crt` (every flag also
//! `PLASMACLOUD_CHAINFIRE_<FLAG>` and a key in `--config FILE`), then form the cluster through
//! the API: `POST /v1/cluster/init` on the seed node, `POST /v1/cluster/learners` for each
//! joiner, `POST /v1/cluster/voters` to promote.
//!
//! Who may call what (`plasmacloud_raft::access`): `/health`, `/readyz` and `/metrics` anyone
//! over TLS;
//! every other API route a certificate of the cluster CA (node or operator); the Raft port a
//! node certificate only. Serials listed under `pki/revoked/` are refused within a few seconds
//! (`plasmacloud_raft::revocation`: Chainfire reads its own applied state).
//!
//! API (JSON errors `{"error":"…"}` everywhere):
//! - `GET /health` → `{"status":"healthy","raft":"leader","cluster_size":3}` or 503 with
//!   `"status":"unhealthy"` and a `reason` (no leader, not initialised, removed);
//!   `GET /readyz?verbose` → etcd-style check list.
//! - `PUT /v1/kv/{key}` (body = UTF-8 value) → `{"revision":N}` + `X-Revision`;
//!   `?prev_revision=N` / `?prev_exist=false` compare-and-swap, 409 `{"error","revision"}`;
//!   `GET /v1/kv/{key}` → raw value + `X-Revision`, 404 when absent, linearizable
//!   (`?consistency=serializable` for a local read); `DELETE /v1/kv/{key}[?prev_revision=N]`
//!   → `{"revision","deleted"}`; `GET /v1/kv?prefix=P` → `{"revision","items":[…]}`.
//! - Membership under `/v1/cluster/…` (see `plasmacloud_raft::api`).
//! - `GET /metrics`: the Prometheus text format, series prefixed `chainfire_` (see
//!   `plasmacloud_raft::metrics`).
//!
//! **Followers forward** writes, linearizable reads and membership changes to the leader and
//! relay its answer (no 307); 503 with `"retryable":true` when no leader is known.
//! `plasmacloud-store-client` handles both forwarding and 307 redirects.

use plasmacloud_raft::serve::Server;

/// The service name written in the data directory's marker.
pub const SERVICE: &str = "chainfire";
/// Environment variable prefix.
pub const ENV_PREFIX: &str = "PLASMACLOUD_CHAINFIRE";
/// Default API port.
pub const DEFAULT_API_PORT: u16 = 2379;
/// Default Raft port.
pub const DEFAULT_RAFT_PORT: u16 = 2380;
/// How `chainfire-server` starts (see `plasmacloud_raft::serve`).
pub const SERVER: Server = Server::new(SERVICE, ENV_PREFIX, DEFAULT_API_PORT, DEFAULT_RAFT_PORT);
