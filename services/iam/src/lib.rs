//! PlasmaCloud IAM: the identity service every platform API asks "who is calling?".
//!
//! `iam-server` keeps users, roles, role bindings, published token keys and revocations in
//! FlareDB's `iam` namespace — no local state besides its config and its signing key file — and
//! answers HTTPS on port 8080 with the node's certificate. Every write that could race another
//! IAM instance is a compare-and-swap, so instances never overwrite each other.
//!
//! **Who may call** (shared/DESIGN.md, "Trust"): login, token verification, `/health` and
//! `/metrics` are open to anyone over TLS; administration also needs a client certificate of the cluster CA
//! (node or operator); bootstrap and node tokens need a node certificate. IAM reaches FlareDB
//! with the node's certificate, and FlareDB gives the `iam` namespace to nodes only — so no
//! outside client reads password hashes, reopens bootstrap or plants a signing key. Revoked
//! certificates (Chainfire `pki/revoked/`) are refused within seconds ([`cert_revocations`]).
//!
//! Layers, bottom up:
//! - [`model`]: names, password rules, permissions and their matching, built-in roles, the
//!   stored JSON records (no I/O);
//! - [`password`]: argon2id (m = 19456 KiB, t = 2, p = 1, PHC strings) on the blocking pool,
//!   and the check of hashes given from outside;
//! - [`token`]: Ed25519 JWTs (`alg: EdDSA`) and the signing key file;
//! - [`store`]: the four key-value operations IAM needs, as a trait, and the key layout;
//!   [`flaredb`] implements it over FlareDB's HTTP API;
//! - [`service`]: bootstrap, login, verification with the session cache, revocation, CRUD;
//! - [`api`]: the axum routes and who may call each (table of endpoints there);
//!   [`metrics`]: logins, token verifications and requests counted for `GET /metrics`;
//!   [`server`]: bind, TLS, serve; [`cert_revocations`]: revoked certificates from Chainfire;
//! - [`config`]: flags, environment and TOML.
//!
//! **Bootstrap** (`POST /v1/bootstrap {"username","password_hash"}`, node certificate only),
//! like Consul's ACL bootstrap: the first call writes a claim `iam/bootstrap` with
//! `prev_exist=false` holding the user name and the argon2id hash from the contract, then
//! creates the user and its `admin` binding and marks the claim completed. A later call with
//! the same name and hash answers 200 (`"created": false`) and writes nothing — or finishes a
//! first attempt that stopped half-way; anything else gets 409. Two instances racing: one
//! claim wins the CAS, the other re-reads it, so exactly one admin results.
//!
//! **Node tokens** (`POST /v1/auth/node-token`, node certificate only): subject
//! `node:<name>`, built-in role `node`, bound to the certificate's serial; the health check
//! proves IAM end to end with one, since no node knows the admin password.
//!
//! **Sessions across FlareDB outages**: each verified token's subject and roles are cached for
//! the token's lifetime; when FlareDB cannot be reached, a cached token still verifies, while
//! logins, changes and never-seen tokens get 503 with a message saying so.

pub mod api;
pub mod cert_revocations;
pub mod config;
pub mod error;
pub mod flaredb;
pub mod metrics;
pub mod model;
pub mod password;
pub mod server;
pub mod service;
pub mod store;
pub mod token;

pub use error::{IamError, Result};
pub use service::{Iam, Session};
pub use store::Store;
