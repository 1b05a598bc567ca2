//! The Secure Boot chain (`--secure-boot-dir`): x86-64 UEFI PXE machines get shim instead of
//! iPXE, shim loads the signed GRUB beside it, and GRUB reads everything else over TFTP (a
//! signed GRUB cannot load modules, and Debian's has no HTTP built in). This module is what
//! the TFTP server serves on top of the iPXE directory in that mode:
//!
//! | TFTP path | what | who may fetch it |
//! |---|---|---|
//! | `shimx64.efi`, `grubx64.efi` | the files of `--secure-boot-dir` | anyone |
//! | `grub/grub.cfg` | the shared first configuration: source `/grub/<MAC>.cfg` | anyone |
//! | `grub/<mac>.cfg` | the node's configuration ([`pxe_protocol::grub`]): the iPXE script's twin, a new enrollment token for each | the node, by [`crate::boot_access`]'s rule (else "access violation") |
//! | `b/<version>/<path>` | a file of that bundle, while it is served (as over HTTP) | anyone |
//! | `s/<token>/enroll.cpio.zst` | that boot's enrollment initrd | only the node it was made for, from the address its configuration went to |
//!
//! The kernel must be signed by a key the firmware trusts (through shim: Microsoft's, the
//! distribution's, or an enrolled MOK); the initrds are not verified by the firmware, which is
//! why the enrollment token still goes only to the node. A bundle whose kernel carries no
//! signature at all is logged at start and at every reload.

use std::fs::File;
use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use pxe_protocol::dhcp::{GRUB_FILE, SHIM_FILE};
use pxe_protocol::grub::{
    mac_of_config_path, render_boot_config, render_chain_config, render_refusal_config, BootConfig,
    CHAIN_CONFIG_PATH,
};
use tracing::warn;

use crate::boot_plan::{
    enrollment_for, note_artifact, note_enrollment_sent, plan_boot, BootPlan, EnrollRefusal, Loader,
};
use crate::bundle::Bundle;
use crate::enroll_initrd::ENROLL_INITRD_NAME;
use crate::state::{Metrics, State};
use crate::ServerError;

/// Checks `--secure-boot-dir`: shim and GRUB present, each a signed PE image.
pub fn check_dir(dir: &Path) -> Result<(), ServerError> {
    for (name, from) in [
        (SHIM_FILE, "/usr/lib/shim/shimx64.efi.signed (Debian's shim-signed)"),
        (
            GRUB_FILE,
            "/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed (Debian's grub-efi-amd64-signed)",
        ),
    ] {
        let path = dir.join(name);
        let missing = |message: String| ServerError::MissingArtifact {
            path: path.clone(),
            message,
        };
        let mut head = Vec::new();
        File::open(&path)
            .and_then(|f| f.take(PE_HEAD).read_to_end(&mut head))
            .map_err(|e| {
                missing(format!(
                    "{e}: the Secure Boot chain needs {name} in --secure-boot-dir; copy it from {from}"
                ))
            })?;
        match authenticode_signed(&head) {
            Ok(true) => {}
            Ok(false) => {
                return Err(missing(format!(
                    "{name} is an EFI image with no signature: Secure Boot firmware refuses it; use the signed build, {from}"
                )))
            }
            Err(why) => {
                return Err(missing(format!(
                    "{name} is not an EFI image ({why}); copy it from {from}"
                )))
            }
        }
    }
    Ok(())
}

/// Bytes of a PE image read to find its headers.
const PE_HEAD: u64 = 4096;

/// Whether a PE image (its first bytes) carries an Authenticode signature: a non-empty
/// certificate table, data directory 4 of its optional header. `Err` when it is not a PE
/// image at all.
pub fn authenticode_signed(head: &[u8]) -> Result<bool, String> {
    let u16_at = |o: usize| head.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        head.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    if head.get(..2) != Some(b"MZ") {
        return Err("no MZ header".into());
    }
    let pe = u32_at(0x3c).ok_or("truncated DOS header")? as usize;
    if head.get(pe..pe + 4) != Some(b"PE\0\0") {
        return Err(format!("no PE signature at {pe:#x}"));
    }
    let opt = pe + 24;
    let (count_at, dirs_at) = match u16_at(opt).ok_or("truncated optional header")? {
        0x20b => (opt + 108, opt + 112),
        0x10b => (opt + 92, opt + 96),
        m => return Err(format!("unknown optional header magic {m:#x}")),
    };
    let count = u32_at(count_at).ok_or("truncated optional header")?;
    if count <= 4 {
        return Ok(false);
    }
    let size = u32_at(dirs_at + 4 * 8 + 4).ok_or("truncated data directories")?;
    Ok(size > 0)
}

/// Logs each x86-64 kernel of `bundle` that carries no signature (Secure Boot machines will
/// refuse to boot it; machines with it off boot it all the same).
pub fn warn_unsigned_kernels(bundle: &Bundle) {
    let mut seen = std::collections::BTreeSet::new();
    for (name, entry) in &bundle.manifest.entries {
        if entry.arch != plasmacloud_contract::manifest::Arch::X86_64
            || !seen.insert(entry.kernel.clone())
        {
            continue;
        }
        let Some(f) = bundle.file(&entry.kernel) else {
            continue;
        };
        let mut head = vec![0u8; PE_HEAD.min(f.size) as usize];
        let signed = f
            .file
            .read_exact_at(&mut head, 0)
            .map_err(|e| e.to_string())
            .and_then(|()| authenticode_signed(&head));
        match signed {
            Ok(true) => {}
            Ok(false) => {
                warn!(entry = %name, kernel = %entry.kernel, "this kernel carries no signature: machines with Secure Boot on will refuse it (GRUB: \"bad shim signature\"); bundle a distribution-signed kernel or sign it with a key enrolled as a MOK")
            }
            Err(why) => {
                warn!(entry = %name, kernel = %entry.kernel, %why, "this kernel is not an EFI image: UEFI machines cannot boot it through the Secure Boot chain")
            }
        }
    }
}

/// A file the TFTP server sends.
pub struct TftpFile {
    /// Its bytes.
    pub reader: Box<dyn Read + Send>,
    /// Its size (the `tsize` option).
    pub size: u64,
    /// Whether its transfer is a first stage (a `tftp` boot event when done), rather than a
    /// file whose fetch is already an event of its own (configuration, kernel, initrds).
    pub first_stage: bool,
}

/// Why a TFTP read of one of these paths is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TftpRefusal {
    /// No such file (TFTP error 1).
    NotFound(String),
    /// Not for this requester (TFTP error 2).
    Forbidden(String),
    /// The server could not do it now (TFTP error 0).
    Unavailable(String),
}

fn bytes(b: Vec<u8>) -> TftpFile {
    TftpFile {
        size: b.len() as u64,
        reader: Box::new(std::io::Cursor::new(b)),
        first_stage: false,
    }
}

/// A bundle file read from the handle the bundle opened at load.
struct HandleReader {
    file: Arc<File>,
    pos: u64,
}

impl Read for HandleReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// What the TFTP server sends for `filename` from `peer` in Secure Boot mode; `None` when the
/// path is none of this module's (then it is looked up in the iPXE directory), or the mode is
/// off. Runs on the TFTP transfer's blocking thread (it may wait for the token store).
pub fn tftp_file(
    state: &Arc<State>,
    peer: SocketAddr,
    filename: &str,
) -> Option<Result<TftpFile, TftpRefusal>> {
    let dir = state.config.secure_boot_dir.as_ref()?;
    let path = filename.trim_start_matches('/');
    if path == SHIM_FILE || path == GRUB_FILE {
        return Some(
            File::open(dir.join(path))
                .and_then(|f| Ok((f.metadata()?.len(), f)))
                .map(|(size, f)| TftpFile {
                    reader: Box::new(f),
                    size,
                    first_stage: true,
                })
                .map_err(|e| TftpRefusal::NotFound(format!("{path}: {e}"))),
        );
    }
    if path == CHAIN_CONFIG_PATH {
        return Some(Ok(bytes(render_chain_config().into_bytes())));
    }
    if let Some(mac) = mac_of_config_path(path) {
        return Some(node_config(state, peer, mac));
    }
    if path.starts_with("grub/") {
        // GRUB's own probes ($prefix/x86_64-efi/grub.cfg, …): nothing else is there.
        return Some(Err(TftpRefusal::NotFound(path.to_string())));
    }
    if let Some(rest) = path.strip_prefix("b/") {
        return Some(bundle_file(state, peer, rest));
    }
    if let Some(rest) = path.strip_prefix("s/") {
        return Some(enrollment_file(state, peer, rest));
    }
    None
}

fn node_config(state: &Arc<State>, peer: SocketAddr, mac: &str) -> Result<TftpFile, TftpRefusal> {
    let mac: plasmacloud_contract::MacAddr = mac
        .parse()
        .map_err(|_| TftpRefusal::NotFound(format!("grub/{mac}.cfg: not a MAC address")))?;
    // The signed GRUB here is x86-64 only (grubx64.efi): an aarch64 entry is refused by the
    // same rule as an iPXE of the wrong architecture.
    let claimed = Some(plasmacloud_contract::manifest::Arch::X86_64);
    let plan = tokio::runtime::Handle::current().block_on(plan_boot(
        state,
        peer,
        mac,
        claimed,
        Loader::Grub,
    ));
    match plan {
        BootPlan::Boot(b) => {
            let base = format!("b/{}", b.bundle.version);
            let mut initrd_paths: Vec<String> = b
                .entry
                .initrds
                .iter()
                .map(|p| format!("{base}/{p}"))
                .collect();
            if let Some(t) = &b.url_token {
                initrd_paths.push(format!("s/{t}/{ENROLL_INITRD_NAME}"));
            }
            let text = render_boot_config(&BootConfig {
                title: b.title,
                kernel_path: format!("{base}/{}", b.entry.kernel),
                initrd_paths,
                cmdline: b.entry.cmdline,
            });
            Ok(bytes(text.into_bytes()))
        }
        BootPlan::Refuse(why) => {
            Metrics::inc(&state.metrics.tftp_refused);
            Ok(bytes(render_refusal_config(&why).into_bytes()))
        }
        BootPlan::Ignored(why) => Ok(bytes(render_refusal_config(&why).into_bytes())),
        BootPlan::Forbidden => Err(TftpRefusal::Forbidden(
            "this node's configuration is served only to the node".into(),
        )),
        BootPlan::NotFound(what) => Err(TftpRefusal::NotFound(what)),
        BootPlan::Unavailable => Err(TftpRefusal::Unavailable(
            "cannot record an enrollment token; see pxe-server's log".into(),
        )),
    }
}

fn bundle_file(state: &State, peer: SocketAddr, rest: &str) -> Result<TftpFile, TftpRefusal> {
    let (version, file) = rest
        .split_once('/')
        .ok_or_else(|| TftpRefusal::NotFound(format!("b/{rest}")))?;
    let bundle = state.bundles.by_version(version).ok_or_else(|| {
        TftpRefusal::NotFound(format!(
            "bundle {version} is not served any more; boot again"
        ))
    })?;
    let f = bundle
        .file(file)
        .ok_or_else(|| TftpRefusal::NotFound(file.to_string()))?;
    note_artifact(state, &bundle, peer, file);
    Ok(TftpFile {
        reader: Box::new(HandleReader {
            file: f.file.clone(),
            pos: 0,
        }),
        size: f.size,
        first_stage: false,
    })
}

fn enrollment_file(state: &State, peer: SocketAddr, rest: &str) -> Result<TftpFile, TftpRefusal> {
    let (token, file) = rest
        .split_once('/')
        .ok_or_else(|| TftpRefusal::NotFound(format!("s/{rest}")))?;
    match enrollment_for(state, peer, token, file) {
        Ok((node, body)) => {
            note_enrollment_sent(state, &node, peer, body.len());
            Ok(bytes(body))
        }
        Err(EnrollRefusal::UnknownToken) => Err(TftpRefusal::Forbidden(
            "unknown or expired boot token".into(),
        )),
        Err(EnrollRefusal::NotTheNode) => Err(TftpRefusal::Forbidden(
            "this boot's enrollment initrd goes only to the node it was made for".into(),
        )),
        Err(EnrollRefusal::NotFound(what)) => Err(TftpRefusal::NotFound(what)),
        Err(EnrollRefusal::Internal) => Err(TftpRefusal::Unavailable(
            "cannot make the enrollment initrd; see pxe-server's log".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal PE32+ header with `dirs` data directories, the certificate table `cert` bytes.
    fn pe(dirs: u32, cert: u32) -> Vec<u8> {
        let mut b = vec![0u8; 512];
        b[..2].copy_from_slice(b"MZ");
        b[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
        b[0x80..0x84].copy_from_slice(b"PE\0\0");
        let opt = 0x80 + 24;
        b[opt..opt + 2].copy_from_slice(&0x20bu16.to_le_bytes());
        b[opt + 108..opt + 112].copy_from_slice(&dirs.to_le_bytes());
        let sec = opt + 112 + 4 * 8;
        b[sec..sec + 4].copy_from_slice(&0x1000u32.to_le_bytes());
        b[sec + 4..sec + 8].copy_from_slice(&cert.to_le_bytes());
        b
    }

    #[test]
    fn signature_is_the_certificate_table() {
        assert_eq!(authenticode_signed(&pe(16, 0x900)), Ok(true));
        assert_eq!(authenticode_signed(&pe(16, 0)), Ok(false));
        assert_eq!(authenticode_signed(&pe(4, 0x900)), Ok(false));
        assert!(authenticode_signed(b"\x7fELF").is_err());
        assert!(authenticode_signed(&pe(16, 1)[..0x90]).is_err());
    }

    #[test]
    fn debian_signed_binaries_are_signed_and_the_unsigned_shim_is_not() {
        let (signed, unsigned) = (
            "/usr/lib/shim/shimx64.efi.signed",
            "/usr/lib/shim/shimx64.efi",
        );
        // Debian's shim-signed (vm-tests/install-deps installs it).
        if !plasmacloud_testkit::require(
            "debian_signed_binaries_are_signed_and_the_unsigned_shim_is_not",
            &[
                plasmacloud_testkit::Need::File(signed),
                plasmacloud_testkit::Need::File(unsigned),
            ],
        ) {
            return;
        }
        let head = |p: &str| {
            let mut b = Vec::new();
            File::open(p)
                .and_then(|f| f.take(PE_HEAD).read_to_end(&mut b))
                .expect("read");
            b
        };
        let (signed, unsigned) = (head(signed), head(unsigned));
        assert_eq!(authenticode_signed(&signed), Ok(true));
        assert_eq!(authenticode_signed(&unsigned), Ok(false));
    }
}
