//! The enrollment initrd: one small newc archive made per boot of a known node, holding that
//! boot's single-use token and the cluster CA, which the kernel unpacks after the base initrd
//! and the node's overlay.
//!
//! It is zstd-compressed like the overlay, although it is tiny: under UEFI the kernel's EFI
//! stub loads the initrds back to back, and the kernel takes an *uncompressed* archive only at
//! a 4-byte-aligned offset of the whole (`init/initramfs.c`), which the overlay's arbitrary
//! length breaks ("Initramfs unpacking failed: invalid magic"); a compressed archive is found
//! at any offset. (BIOS iPXE aligns each initrd, so it worked there.)
//!
//! ```text
//! etc/                              0755
//! etc/plasmacloud/                  0755
//! etc/plasmacloud/enroll/           0700
//! etc/plasmacloud/enroll/token      0600  32 hex digits and a newline
//! etc/plasmacloud/enroll/ca.crt     0644  the cluster CA (PEM)
//! ```
//!
//! It is made in memory when the node fetches it (through its per-boot URL) and never written
//! anywhere; `firstboot enroll` reads both files (`plasmacloud_contract::ENROLL_DIR`).

use std::path::Path;

use netboot_image::bundle::compress_overlay;
use netboot_image::newc::Entry;
use plasmacloud_contract::{ENROLL_CA_FILE, ENROLL_DIR, ENROLL_TOKEN_FILE};

use crate::ServerError;

/// The name the enrollment initrd has in a boot script (`initrd=enroll.cpio.zst`).
pub const ENROLL_INITRD_NAME: &str = "enroll.cpio.zst";

/// The archive for one boot: `token` and the CA certificate `ca_pem`.
pub fn enrollment_initrd(token: &str, ca_pem: &str) -> Result<Vec<u8>, ServerError> {
    let dir = Path::new(ENROLL_DIR.trim_start_matches('/'));
    let mut entries = Vec::new();
    let mut parents: Vec<&Path> = dir
        .ancestors()
        .filter(|p| !p.as_os_str().is_empty())
        .collect();
    parents.reverse();
    for p in parents {
        let perm = if p == dir { 0o700 } else { 0o755 };
        entries.push(Entry::dir(p, perm));
    }
    entries.push(Entry::bytes(
        dir.join(ENROLL_TOKEN_FILE),
        0o600,
        format!("{}\n", token.trim()),
    ));
    entries.push(Entry::bytes(
        dir.join(ENROLL_CA_FILE),
        0o644,
        ca_pem.as_bytes().to_vec(),
    ));
    compress_overlay(&entries, ENROLL_INITRD_NAME).map_err(|e| ServerError::State {
        path: dir.to_path_buf(),
        message: format!("cannot make the enrollment initrd: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_archive_holds_the_token_private_and_the_ca() {
        let bytes =
            enrollment_initrd("0123456789abcdef0123456789abcdef", "CA PEM\n").expect("cpio");
        assert_eq!(
            &bytes[..4],
            b"\x28\xb5\x2f\xfd",
            "zstd, so the kernel finds it at any offset"
        );
        let cpio = zstd::decode_all(bytes.as_slice()).expect("zstd");
        let members = netboot_image::newc::list(&cpio).expect("newc");
        let got: Vec<(&str, u32)> = members.iter().map(|m| (m.name.as_str(), m.mode)).collect();
        assert_eq!(
            got,
            [
                ("etc", 0o040755),
                ("etc/plasmacloud", 0o040755),
                ("etc/plasmacloud/enroll", 0o040700),
                ("etc/plasmacloud/enroll/token", 0o100600),
                ("etc/plasmacloud/enroll/ca.crt", 0o100644),
            ]
        );
        assert_eq!(members[3].data, b"0123456789abcdef0123456789abcdef\n");
        assert_eq!(members[4].data, b"CA PEM\n");
        assert!(members.iter().all(|m| m.uid == 0 && m.gid == 0));
    }
}
