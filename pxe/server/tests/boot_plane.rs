//! TFTP and HTTP with real clients in network namespaces (root): tftp-hpa, atftp (windowsize)
//! and curl download byte-exact with option negotiation; writes and traversal are refused; a
//! lost ACK is retransmitted; block numbers wrap; HTTP Range/HEAD/ETag with curl; a node's
//! script and enrollment initrd are refused (403) to any other address, its overlay is public.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use plasmacloud_testkit::{require, Need};

const CONFIGURE_SCRIPT: &str =
    "#!/bin/sh\n[ \"$1\" = bound ] && ip addr add \"$ip/24\" dev \"$interface\"\nexit 0\n";

/// Two stalled transfers fill a limit of 2; a third request is refused as busy; then the two
/// are aborted with ERROR packets.
const LIMIT_PY: &str = r#"
import socket, sys
srv = (sys.argv[1], 69)
stalled = []
for _ in range(2):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.sendto(b"\x00\x01small.bin\x00octet\x00", srv)
    d, peer = s.recvfrom(2048)
    assert d[:2] == b"\x00\x03", d[:4]
    stalled.append((s, peer))
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
c.settimeout(5)
c.sendto(b"\x00\x01small.bin\x00octet\x00", srv)
d, _ = c.recvfrom(2048)
assert d[:2] == b"\x00\x05", d
print("third refused: " + d[4:-1].decode())
for s, peer in stalled:
    s.sendto(b"\x00\x05\x00\x00done\x00", peer)
"#;

/// A TFTP client that withholds its first ACK and reports whether DATA 1 came again.
const LOST_ACK_PY: &str = r#"
import socket, struct, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(10)
s.sendto(b"\x00\x01small.bin\x00octet\x00", (sys.argv[1], 69))
d, peer = s.recvfrom(2048)
assert d[:4] == b"\x00\x03\x00\x01", d[:4]
t0 = time.time()
d2, peer2 = s.recvfrom(2048)   # no ACK sent: the server must retransmit block 1
assert d2 == d and peer2 == peer, "retransmission differs"
waited = time.time() - t0
out = bytearray(d[4:])
block = 1
while True:
    s.sendto(struct.pack("!HH", 4, block), peer)
    if len(d) - 4 < 512:
        break
    d, _ = s.recvfrom(2048)
    b = struct.unpack("!H", d[2:4])[0]
    if b == block:
        continue
    block = b
    out += d[4:]
open(sys.argv[2], "wb").write(out)
print("retransmitted after %.2f s" % waited)
"#;

/// tftp-hpa's client in `ns`, binary mode, against the server: `tftp … -c COMMAND…`.
fn tftp_hpa(ns: &str, command: &[&str]) -> (bool, String) {
    let mut args = vec!["tftp", "-m", "binary", "10.77.0.1", "-c"];
    args.extend_from_slice(command);
    try_sh_in(ns, &args)
}

#[test]
fn tftp_and_http_with_real_clients() {
    if !require(
        "tftp_and_http_with_real_clients",
        &[
            Need::Root,
            Need::Tool("udhcpc"),
            Need::Tool("tftp"),
            Need::Tool("atftp"),
            Need::Tool("curl"),
            Need::Tool("python3"),
        ],
    ) {
        return;
    }
    let kernel = pattern(3 * 1024 * 1024 + 17, 1);
    let fx = Fixture::new(
        &kernel,
        &pattern(100_000, 2),
        "console=ttyS0",
        &overlay_bytes,
    );
    let (d, ipxe) = (fx.d.as_path(), &fx.ipxe);
    let mut rack = rack();
    let srv = attach_server(&mut rack, "10.77.0.1/24");
    let n1 = attach_client(&mut rack, "n1", NODES[0].1, None);
    let other = attach_client(&mut rack, "o", "52:54:00:cc:00:01", Some("10.77.0.60/24"));
    let big = pattern(5 * 1024 * 1024 + 123, 3);
    std::fs::write(ipxe.join("big.bin"), &big).unwrap();
    std::fs::write(ipxe.join("small.bin"), pattern(2000, 4)).unwrap();
    let wrap = pattern(65_540 * 8 + 3, 5); // more than 65535 blocks at blksize 8
    std::fs::write(ipxe.join("wrap.bin"), &wrap).unwrap();
    std::fs::write(d.join("outside"), b"not yours").unwrap();
    std::os::unix::fs::symlink(d.join("outside"), ipxe.join("escape")).unwrap();
    let state = d.join("state");
    let args = fx.server_args(
        "full",
        &state,
        &["--ipv6-ra", "off", "--tftp-max-transfers", "2"],
    );
    let server = start_server(&srv, &args, &d.join("server.log"));
    let op = issue_operator(&state, "tests", &d.join("op"));

    eprintln!("phase: node01 leases its address");
    let script = d.join("configure.sh");
    write_script(&script, CONFIGURE_SCRIPT);
    let (ok, log) = udhcpc_once(&n1, &script, 6, Some(BIOS_PXE_CLIENT), &[]);
    assert!(ok, "udhcpc: {log}");
    assert!(sh(&["ip", "-n", &n1, "addr", "show", "cli0"]).contains("10.77.0.11/24"));

    let same = |path: &std::path::Path, want: &[u8], who: &str| {
        let got = std::fs::read(path).unwrap_or_default();
        assert!(
            got.len() == want.len() && got == want,
            "{who}: {} bytes, want {} (byte-exact)",
            got.len(),
            want.len()
        );
    };

    eprintln!("phase: the concurrent-transfer limit (2) refuses a third transfer");
    let py = d.join("limit.py");
    std::fs::write(&py, LIMIT_PY).unwrap();
    let got = sh_in(&n1, &["python3", py.to_str().unwrap(), "10.77.0.1"]);
    assert!(got.contains("third refused: server busy"), "{got}");
    plasmacloud_testkit::wait_until(
        "the aborted transfers to end",
        std::time::Duration::from_secs(10),
        || {
            let (_, m) = curl_as(&srv, &op, &[&mgmt_url("/metrics")]);
            m.contains("pxe_tftp_active_transfers 0").then_some(())
        },
    )
    .unwrap();

    eprintln!("phase: tftp-hpa, default options, byte-exact");
    let out = d.join("hpa.bin");
    let (ok, log) = tftp_hpa(&n1, &["get", "big.bin", out.to_str().unwrap()]);
    assert!(ok, "tftp-hpa: {log}");
    same(&out, &big, "tftp-hpa");

    eprintln!("phase: atftp with windowsize 8 and blksize 1432");
    let out = d.join("atftp.bin");
    let (ok, log) = try_sh_in(
        &n1,
        &[
            "atftp",
            "--option",
            "blksize 1432",
            "--option",
            "windowsize 8",
            "--option",
            "tsize 0",
            "-g",
            "-r",
            "big.bin",
            "-l",
            out.to_str().unwrap(),
            "10.77.0.1",
        ],
    );
    assert!(ok, "atftp: {log}");
    same(&out, &big, "atftp windowsize 8");
    // The server logs the grant as the transfer starts; under load that line can land a
    // moment after the client is done.
    plasmacloud_testkit::wait_until(
        "the windowsize 8 grant in the log",
        std::time::Duration::from_secs(10),
        || server.proc.output().contains("windowsize 8").then_some(()),
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}: the server must have granted windowsize 8:\n{}",
            server.proc.output()
        )
    });

    eprintln!("phase: curl with blksize 1432 (OACK) byte-exact, and blksize 8 across the block-number wrap");
    let out = d.join("curl.bin");
    sh_in(
        &n1,
        &[
            "curl",
            "-sS",
            "--tftp-blksize",
            "1432",
            "-o",
            out.to_str().unwrap(),
            "tftp://10.77.0.1/big.bin",
        ],
    );
    same(&out, &big, "curl");
    let out = d.join("wrap.out");
    sh_in(
        &n1,
        &[
            "curl",
            "-sS",
            "--max-time",
            "120",
            "--tftp-blksize",
            "8",
            "-o",
            out.to_str().unwrap(),
            "tftp://10.77.0.1/wrap.bin",
        ],
    );
    same(&out, &wrap, "curl blksize 8 past block 65535");

    eprintln!("phase: writes and traversal are refused");
    let up = d.join("upload");
    std::fs::write(&up, b"x").unwrap();
    let (_, log) = tftp_hpa(&n1, &["put", up.to_str().unwrap(), "upload"]);
    assert!(
        log.contains("read-only")
            || log.contains("Access violation")
            || log.contains("Error code 2"),
        "put: {log}"
    );
    assert!(!ipxe.join("upload").exists());
    let (ok, log) = try_sh_in(
        &n1,
        &[
            "curl",
            "-sS",
            "-T",
            up.to_str().unwrap(),
            "tftp://10.77.0.1/upload2",
        ],
    );
    assert!(!ok, "curl upload must fail: {log}");
    for bad in ["../outside", "/etc/passwd", "escape"] {
        let out = d.join("bad.out");
        let (_, log) = tftp_hpa(&n1, &["get", bad, out.to_str().unwrap()]);
        assert!(
            log.contains("ccess violation") || log.contains("Error code 2"),
            "{bad}: {log}"
        );
        assert!(
            std::fs::read(&out).unwrap_or_default() != b"not yours",
            "{bad} leaked"
        );
    }

    eprintln!("phase: a withheld ACK makes the server retransmit");
    let py = d.join("lostack.py");
    std::fs::write(&py, LOST_ACK_PY).unwrap();
    let out = d.join("lostack.out");
    let got = sh_in(
        &n1,
        &[
            "python3",
            py.to_str().unwrap(),
            "10.77.0.1",
            out.to_str().unwrap(),
        ],
    );
    assert!(got.contains("retransmitted after"), "{got}");
    same(
        &out,
        &std::fs::read(ipxe.join("small.bin")).unwrap(),
        "lost-ACK client",
    );

    eprintln!("phase: node01's script, from node01's address, names three initrds: base, overlay, enrollment");
    let (ok, script_text) = curl(&n1, &["http://10.77.0.1:8081/boot/52-54-00-aa-00-01.ipxe"]);
    assert!(ok, "{script_text}");
    assert!(
        script_text.contains(
            "initrd=initrd.img initrd=overlay-node01.cpio.zst initrd=enroll.cpio.zst console=ttyS0 plasmacloud.node=node01"
        ),
        "{script_text}"
    );
    let url_of = |name: &str| {
        script_text
            .lines()
            .find(|l| l.contains(&format!("--name {name} ")))
            .and_then(|l| l.split_whitespace().find(|w| w.starts_with("http://")))
            .unwrap()
            .to_string()
    };
    let overlay_url = url_of("overlay-node01.cpio.zst");
    assert!(overlay_url.contains("/b/"), "{overlay_url}");
    let enroll_url = url_of("enroll.cpio.zst");
    assert!(enroll_url.contains("/s/"), "{enroll_url}");
    let out = d.join("enroll.cpio.zst");
    let (ok, log) = curl(&n1, &["-o", out.to_str().unwrap(), &enroll_url]);
    assert!(ok, "{log}");
    let cpio = zstd::decode_all(std::fs::File::open(&out).unwrap()).unwrap();
    let members = netboot_image::newc::list(&cpio).unwrap();
    let token = members
        .iter()
        .find(|m| m.name == "etc/plasmacloud/enroll/token")
        .expect("the token is in the enrollment initrd");
    assert_eq!(token.mode & 0o777, 0o600);
    assert_eq!(token.data.len(), 33, "32 hex digits and a newline");
    assert!(members
        .iter()
        .any(|m| m.name == "etc/plasmacloud/enroll/ca.crt"));

    eprintln!("phase: any other address gets 403 for node01's script and enrollment initrd; the overlay is public");
    for url in [
        enroll_url.as_str(),
        "http://10.77.0.1:8081/boot/52-54-00-aa-00-01.ipxe",
    ] {
        let code = curl_code(&other, &[], "/dev/null", url);
        assert_eq!(code, "403", "{url} from another address");
    }
    let (ok, overlay) = curl(&other, &[&overlay_url]);
    assert!(ok);
    assert_eq!(overlay.as_bytes(), overlay_bytes("node01").as_slice());
    let i = enroll_url.find("/s/").unwrap() + 3;
    let forged = format!(
        "{}{}{}",
        &enroll_url[..i],
        "0".repeat(32),
        &enroll_url[i + 32..]
    );
    let code = curl_code(&n1, &[], "/dev/null", &forged);
    assert_eq!(code, "403", "guessed token");

    eprintln!("phase: a MAC not in the contract gets the default entry, without any overlay");
    let (ok, text) = curl(
        &other,
        &["http://10.77.0.1:8081/boot/52-54-00-cc-00-01.ipxe"],
    );
    assert!(ok, "{text}");
    assert!(text.contains("initrd=initrd.img console=ttyS0"), "{text}");
    assert!(
        !text.contains("/s/") && !text.contains("plasmacloud.node="),
        "{text}"
    );

    eprintln!("phase: HTTP HEAD, Range and ETag on the kernel");
    let (_, head) = curl(&other, &["-I", "http://10.77.0.1:8081/files/vmlinuz"]);
    let head_l = head.to_ascii_lowercase();
    assert!(
        head_l.contains(&format!("content-length: {}", kernel.len())),
        "{head}"
    );
    assert!(head_l.contains("accept-ranges: bytes"), "{head}");
    let etag = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("etag:"))
        .unwrap()
        .split_once(':')
        .unwrap()
        .1
        .trim()
        .to_string();
    let out = d.join("range.bin");
    let out_s = out.to_str().unwrap();
    let vmlinuz = "http://10.77.0.1:8081/files/vmlinuz";
    let if_none_match = format!("If-None-Match: {etag}");
    let suffix = &kernel[kernel.len() - 17..];
    for (args, want, body) in [
        (&["-r", "1000-1999"][..], "206", Some(&kernel[1000..2000])),
        (&["-r", "-17"][..], "206", Some(suffix)),
        (&["-r", "99999999-"][..], "416", None),
        (&["-H", &if_none_match][..], "304", None),
        (&[][..], "200", Some(&kernel[..])),
    ] {
        let to = if body.is_some() { out_s } else { "/dev/null" };
        let code = curl_code(&other, args, to, vmlinuz);
        assert_eq!(code, want, "GET the kernel with {args:?}");
        if let Some(body) = body {
            same(&out, body, &format!("the kernel with {args:?}"));
        }
    }

    eprintln!("phase: one keep-alive connection: sendfile GETs, a script (hyper), GET again");
    let outs: Vec<std::path::PathBuf> = (0..4).map(|i| d.join(format!("ka{i}.bin"))).collect();
    let mut args: Vec<String> = vec!["-w".into(), "%{http_code} %{num_connects}\\n".into()];
    let urls = [
        "http://10.77.0.1:8081/files/vmlinuz",
        "http://10.77.0.1:8081/files/vmlinuz",
        "http://10.77.0.1:8081/boot/52-54-00-cc-00-01.ipxe",
        "http://10.77.0.1:8081/files/vmlinuz",
    ];
    for (o, u) in outs.iter().zip(urls) {
        args.extend(["-o".into(), o.display().to_string(), u.into()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, codes) = curl(&other, &args);
    assert!(ok, "{codes}");
    assert_eq!(
        codes.lines().collect::<Vec<_>>(),
        ["200 1", "200 0", "200 0", "200 0"],
        "one connection, four answers"
    );
    for i in [0, 1, 3] {
        same(&outs[i], &kernel, "kernel over a kept-alive connection");
    }
    assert!(std::fs::read_to_string(&outs[2])
        .unwrap()
        .starts_with("#!ipxe"));

    eprintln!("phase: metrics count it");
    let (_, m) = curl_as(&srv, &op, &[&mgmt_url("/metrics")]);
    for needle in [
        "pxe_tftp_retransmits_total",
        "pxe_http_errors_total{kind=\"forbidden\"}",
        "pxe_tftp_transfers_total{result=\"refused\"}",
    ] {
        let line = m
            .lines()
            .find(|l| l.starts_with(needle))
            .unwrap_or_else(|| panic!("{needle} missing:\n{m}"));
        assert!(!line.ends_with(" 0"), "{line}");
    }
    drop(server);
    drop(rack);
}
