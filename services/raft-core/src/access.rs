//! Who may call what on a node's two ports (shared/DESIGN.md, "Trust").
//!
//! The rules, in the order a request meets them:
//!
//! 1. **Both ports speak TLS with the node's certificate** from the cluster CA, and accept only
//!    client certificates of that CA that are not revoked (checked at the handshake).
//! 2. **The Raft port** requires a client certificate at the handshake, and every route on it
//!    (`/raft/append`, `/raft/vote`, `/raft/snapshot`, `/raft/identity`) needs a *node*
//!    certificate: only cluster nodes replicate, vote or learn who listens.
//! 3. **The API port** asks for a client certificate without requiring one: `GET /health`,
//!    `GET /readyz` and `GET /metrics` answer anyone over TLS (the seed's
//!    `curl -k https://host:2379/health`, a Prometheus scraper);
//!    every other route needs a certificate of the cluster CA, a node's or an operator's
//!    (401 without, 403 when it names no PlasmaCloud identity).
//! 4. **FlareDB's `iam` and `system` namespaces are node-only**: they hold what IAM and the
//!    cluster itself keep (password hashes, signing keys), so an operator's certificate is
//!    refused there with 403 naming this rule ([`NODE_ONLY_NAMESPACES`]).
//! 5. **Revocation bites on open connections too**: a serial revoked after a connection was
//!    opened is refused on that connection's next request (403), by the same guard.
//!
//! Who the caller is comes from the certificate rustls verified, never from a header. A
//! follower forwards a request to the leader with its own node certificate, after it applied
//! rules 3 and 4 to the original caller itself.
//!
//! `--dev-plaintext` (loopback addresses only, a loud warning at start) turns all of this off
//! for development; nothing shipped uses it.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use plasmacloud_pki::listener::{guard, Caller, Need};
use plasmacloud_pki::tls::{ClientAuth, TlsMaterial};
use plasmacloud_pki::{Revocations, Role};
use plasmacloud_store_client::ErrorBody;

use crate::config::HOW_TO_GET_A_CERTIFICATE;
use crate::error::Error;
use crate::node::NodeConfig;

/// FlareDB namespaces only node certificates may read or write.
pub const NODE_ONLY_NAMESPACES: [&str; 2] = ["iam", "system"];

fn error_response(status: StatusCode, msg: String) -> Response {
    (status, Json(ErrorBody::new(msg))).into_response()
}

/// Which of the node's two ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// The API port (2379 / 2479).
    Api,
    /// The Raft port (2380 / 2480).
    Raft,
}

/// A node's TLS material and revocation set, and the guards built from them.
#[derive(Debug, Clone)]
pub struct Access {
    /// `None` only under `--dev-plaintext`.
    tls: Option<TlsMaterial>,
    revoked: Revocations,
}

impl Access {
    /// Loads the node's certificate, key and CA (the configuration was validated: they are
    /// given unless `--dev-plaintext` is).
    pub fn load(cfg: &NodeConfig) -> Result<Self, Error> {
        let tls = match &cfg.tls {
            Some(files) => {
                let m = TlsMaterial::load(files).map_err(|e| {
                    Error::Tls(format!(
                        "{e} (tls_cert {}, tls_key {}, tls_ca {}; {HOW_TO_GET_A_CERTIFICATE})",
                        files.cert.display(),
                        files.key.display(),
                        files.ca.display()
                    ))
                })?;
                if m.identity().identity.role != Role::Node {
                    return Err(Error::Tls(format!(
                        "{} names {}, not a node: a server runs with its node's certificate ({HOW_TO_GET_A_CERTIFICATE})",
                        files.cert.display(),
                        m.identity().identity
                    )));
                }
                Some(m)
            }
            None => None,
        };
        Ok(Self {
            tls,
            revoked: Revocations::default(),
        })
    }

    /// Whether the ports speak mutual TLS (always, but under `--dev-plaintext`).
    pub fn is_mtls(&self) -> bool {
        self.tls.is_some()
    }

    /// The node's own TLS material (`None` under `--dev-plaintext`).
    pub fn material(&self) -> Option<&TlsMaterial> {
        self.tls.as_ref()
    }

    /// The revoked serials this node refuses (refreshed by [`crate::revocation`]).
    pub fn revoked(&self) -> &Revocations {
        &self.revoked
    }

    /// `https`, or `http` under `--dev-plaintext`.
    pub fn scheme(&self) -> &'static str {
        if self.is_mtls() {
            "https"
        } else {
            "http"
        }
    }

    /// The rustls configuration of `port` (`None` under `--dev-plaintext`).
    pub fn server_config(&self, port: Port) -> Result<Option<Arc<rustls::ServerConfig>>, Error> {
        let Some(m) = &self.tls else { return Ok(None) };
        let auth = match port {
            Port::Api => ClientAuth::Optional,
            Port::Raft => ClientAuth::Required,
        };
        m.server_config(auth, &self.revoked)
            .map(Some)
            .map_err(|e| Error::Tls(e.to_string()))
    }

    /// The client this node calls its peers with (forwarding, Raft RPC, identity): it presents
    /// the node's own certificate and trusts only the cluster CA.
    pub fn peer_client(&self) -> Result<reqwest::Client, Error> {
        let b = match &self.tls {
            Some(m) => m
                .reqwest_builder()
                .map_err(|e| Error::Tls(format!("the peer client: {e}")))?,
            None => reqwest::Client::builder(),
        };
        b.redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(crate::bounds::CLIENT_POOL_IDLE)
            .pool_max_idle_per_host(128)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| Error::Tls(format!("building the peer HTTP client: {e}")))
    }

    /// `router` with every route guarded as `port` requires (rule 2 or 3); unchanged under
    /// `--dev-plaintext`.
    pub fn guard(&self, port: Port, router: Router) -> Router {
        if !self.is_mtls() {
            return router;
        }
        let need = match port {
            Port::Api => Need::cluster_certificate(&self.revoked),
            Port::Raft => Need::node(&self.revoked),
        };
        router.route_layer(axum::middleware::from_fn_with_state(need, guard))
    }

    /// Rule 4: may `caller` read or write namespace `ns`? The error is the answer.
    pub fn check_namespace(&self, ns: &str, caller: Option<&Caller>) -> Result<(), Response> {
        if !self.is_mtls() || !NODE_ONLY_NAMESPACES.contains(&ns) {
            return Ok(());
        }
        match caller {
            Some(Caller(c)) if c.identity.role == Role::Node => Ok(()),
            Some(Caller(c)) => Err(error_response(
                StatusCode::FORBIDDEN,
                format!(
                    "namespace {ns:?} is node-only: {} may not read or write it (the namespaces {} hold the cluster's own secrets; only cluster nodes' certificates reach them)",
                    c.identity,
                    NODE_ONLY_NAMESPACES.join(" and ")
                ),
            )),
            // The guard runs first on every TLS route; a request without a caller never
            // gets here, but if one did it is refused all the same.
            None => Err(error_response(
                StatusCode::UNAUTHORIZED,
                format!("namespace {ns:?} needs a node certificate of the cluster CA"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plasmacloud_pki::ca::{CertSpec, ClusterCa};
    use plasmacloud_pki::identity::inspect;
    use plasmacloud_pki::Identity;

    fn caller(ca: &ClusterCa, spec: &CertSpec) -> Caller {
        let (issued, _) = ca.issue_with_new_key(spec).expect("issue");
        let der = rustls_pemfile::certs(&mut issued.cert_pem.as_bytes())
            .next()
            .expect("one")
            .expect("pem");
        Caller(Arc::new(inspect(&der).expect("inspect")))
    }

    #[test]
    fn node_only_namespaces_refuse_operators_by_name() {
        let ca = ClusterCa::generate("t").expect("ca");
        let ip = std::net::IpAddr::from([127, 0, 0, 1]);
        let (issued, key) = ca
            .issue_with_new_key(&CertSpec::node(Identity::node("node01").expect("id"), ip))
            .expect("issue");
        let m = TlsMaterial::from_pem("t", &issued.cert_pem, &key, ca.cert_pem()).expect("m");
        let access = Access {
            tls: Some(m),
            revoked: Revocations::default(),
        };
        let node = caller(
            &ca,
            &CertSpec::node(Identity::node("node02").expect("id"), ip),
        );
        let op = caller(
            &ca,
            &CertSpec::operator(Identity::operator("alice").expect("id")),
        );
        for ns in NODE_ONLY_NAMESPACES {
            assert!(access.check_namespace(ns, Some(&node)).is_ok());
            let r = access.check_namespace(ns, Some(&op)).expect_err("operator");
            assert_eq!(r.status(), StatusCode::FORBIDDEN);
            assert_eq!(
                access
                    .check_namespace(ns, None)
                    .expect_err("nobody")
                    .status(),
                StatusCode::UNAUTHORIZED
            );
        }
        assert!(access.check_namespace("metrics", Some(&op)).is_ok());
        let plain = Access {
            tls: None,
            revoked: Revocations::default(),
        };
        assert!(plain.check_namespace("iam", None).is_ok());
    }
}
