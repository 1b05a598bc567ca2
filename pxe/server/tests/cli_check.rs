//! `pxe-server check` (binds nothing, no root needed) and `serve`'s start-up errors: every bad
//! configuration gets a clear message naming the flag or file; the TOML file and env vars
//! work like the flags; the enrollment settings and the CA (and the contract's pin on it) are
//! reported and enforced.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::*;
use plasmacloud_testkit::workspace_binary;

fn run(sub: &str, args: &[String], env: &[(&str, &str)]) -> (i32, String) {
    let mut c = Command::new(workspace_binary("pxe-server"));
    c.arg(sub).args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let o = c.output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

fn args_on_lo(
    cluster: &std::path::Path,
    bundle: &std::path::Path,
    ipxe: &std::path::Path,
    state: &std::path::Path,
) -> Vec<String> {
    let mut a = server_args("proxy", cluster, bundle, ipxe, state, &[]);
    a[1] = "lo".into();
    a
}

#[test]
fn check_accepts_good_config_and_names_every_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cluster = write_contract(d, 8081, 8082);
    let bundle = write_bundle(d, &cluster, b"kernel", b"base", "console=ttyS0");
    let ipxe = write_ipxe_dir(d);
    let state = d.join("state");
    let good = args_on_lo(&cluster, &bundle, &ipxe, &state);

    // phase: a good configuration passes and binds nothing
    let (code, out) = run("check", &good, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("config ok: mode proxy on lo"), "{out}");
    for want in [
        "management 127.0.0.1:8082 (https)",
        "enrollment 127.0.0.1:8443 (https)",
        "enroll-token-ttl 3600s",
        "ca none yet (serve creates one)",
    ] {
        assert!(out.contains(want), "{want:?} not in {out}");
    }
    assert!(!state.join("pki").exists(), "check makes no CA");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&state).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the state directory holds the CA key: 0700");

    // phase: the enrollment flags, as flags, env vars and TOML keys
    let mut a = good.clone();
    a.extend(["--enrollment-addr".into(), "127.0.0.1:8081".into()]);
    let (code, out) = run("check", &a, &[]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("--enrollment-addr: 127.0.0.1:8081 is already"),
        "{out}"
    );
    let (code, out) = run("check", &good, &[("PLASMACLOUD_PXE_ENROLL_TOKEN_TTL", "5")]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("--enroll-token-ttl: 5 s is too short"),
        "{out}"
    );
    let (code, out) = run(
        "check",
        &good,
        &[
            ("PLASMACLOUD_PXE_ENROLL_TOKEN_TTL", "600"),
            ("PLASMACLOUD_PXE_ENROLLMENT_ADDR", "127.0.0.1:9443"),
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("enrollment 127.0.0.1:9443 (https), enroll-token-ttl 600s"),
        "{out}"
    );

    // phase: a CA in the state directory is reported; a contract pinning another is refused,
    // one pinning it passes
    let fpr = init_ca(&state);
    assert_eq!(fpr.len(), 64, "{fpr}");
    let (code, out) = run("check", &good, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("ca sha256 {fpr} (not pinned")),
        "{out}"
    );
    let pin = |sha: &str| {
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&cluster).unwrap()).unwrap();
        v["pki"] = serde_json::json!({ "ca_sha256": sha });
        let p = d.join(format!("pinned-{}.json", &sha[..8]));
        std::fs::write(&p, v.to_string()).unwrap();
        p
    };
    let mut a = good.clone();
    a[5] = pin(&"0".repeat(64)).display().to_string();
    let (code, out) = run("check", &a, &[]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("pins the cluster CA sha256 0000") && out.contains(&fpr),
        "{out}"
    );
    a[5] = pin(&fpr).display().to_string();
    let (code, out) = run("check", &a, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("(pinned by the contract)"), "{out}");
    // A pin and no CA at all: a new one could never match, so nothing starts.
    let mut a2 = a.clone();
    a2[11] = d.join("fresh-state").display().to_string();
    let (code, out) = run("check", &a2, &[]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("pki import"), "{out}");

    // phase: the same through a TOML file and env vars
    let toml = d.join("pxe.toml");
    std::fs::write(
        &toml,
        format!(
            "mode = \"proxy\"\ncluster = \"{}\"\nbundle = \"{}\"\nipxe-dir = \"{}\"\nstate-dir = \"{}\"\nunknown-mac = \"ignore\"\n",
            cluster.display(),
            bundle.display(),
            ipxe.display(),
            state.display()
        ),
    )
    .unwrap();
    let (code, out) = run(
        "check",
        &["--config".into(), toml.display().to_string()],
        &[("PLASMACLOUD_PXE_INTERFACE", "lo")],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("unknown-mac Ignore"), "{out}");
    // phase: the shipped example parses and merges under the flags (its dhcp-range, for a
    // real boot network, is rightly refused on lo)
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../pxe-server.example.toml");
    let mut a = vec!["--config".to_string(), example.display().to_string()];
    a.extend(good.clone());
    let (code, out) = run("check", &a, &[]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("--dhcp-range: 10.99.0.100 is outside lo"),
        "{out}"
    );
    std::fs::write(&toml, "interfcae = \"lo\"\n").unwrap();
    let (code, out) = run(
        "check",
        &["--config".into(), toml.display().to_string()],
        &[],
    );
    assert_eq!(code, 2);
    assert!(
        out.contains("unknown field") && out.contains("interfcae"),
        "{out}"
    );

    let with = |i: usize, v: &str| {
        let mut a = good.clone();
        a[i] = v.into();
        a
    };
    // phase: unknown interface
    let (code, out) = run("check", &with(1, "nosuch0"), &[]);
    assert_eq!(code, 2);
    assert!(out.contains("no interface \"nosuch0\""), "{out}");
    // phase: contract errors name the file and field
    let bad_contract = d.join("bad.json");
    std::fs::write(&bad_contract, "{\"version\": 1}").unwrap();
    let (code, out) = run("check", &with(5, bad_contract.to_str().unwrap()), &[]);
    assert_eq!(code, 2);
    assert!(out.contains("bad.json"), "{out}");
    // phase: missing bundle artifact
    std::fs::rename(bundle.join("vmlinuz"), d.join("vmlinuz.moved")).unwrap();
    let (code, out) = run("check", &good, &[]);
    assert_eq!(code, 2);
    assert!(
        out.contains("vmlinuz") && out.contains("listed in manifest.json"),
        "{out}"
    );
    std::fs::rename(d.join("vmlinuz.moved"), bundle.join("vmlinuz")).unwrap();
    // phase: missing iPXE first stage
    let empty = d.join("empty-ipxe");
    std::fs::create_dir_all(&empty).unwrap();
    let (code, out) = run("check", &with(9, empty.to_str().unwrap()), &[]);
    assert_eq!(code, 2);
    assert!(
        out.contains("undionly.kpxe") && out.contains("ipxe"),
        "{out}"
    );
    // phase: bad DHCP range; range in proxy mode
    let mut a = good.clone();
    a.extend(["--dhcp-range".into(), "10.0.0.9-10.0.0.1".into()]);
    let (code, out) = run("check", &a, &[]);
    assert_eq!(code, 2);
    assert!(out.contains("--dhcp-range"), "{out}");
    // phase: full mode with contract addresses off the interface's subnet
    let (code, out) = run("check", &with(3, "full"), &[]);
    assert_eq!(code, 2);
    assert!(out.contains("outside") && out.contains("node01"), "{out}");

    // phase: serve refuses a port in use (the HTTP listener binds first, before DHCP)
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let mut a = good.clone();
    a.extend([
        "--http-addr".into(),
        format!("127.0.0.1:{port}"),
        "--management-addr".into(),
        "127.0.0.1:0".into(),
    ]);
    let (code, out) = run("serve", &a, &[]);
    assert_eq!(code, 2);
    assert!(
        out.contains("cannot bind HTTP boot plane") && out.contains(&port.to_string()),
        "{out}"
    );
}
