//! `pxe-server check` (binds nothing, no root needed) and `serve`'s start-up errors: every bad
//! configuration gets a clear message naming the flag or file; the TOML file and env vars
//! work like the flags.

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
