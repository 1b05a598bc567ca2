//! `netboot-image`: what the PXE server serves, built fast and byte-for-byte reproducibly.
//!
//! - [`bundle`]: `netboot-image bundle` — a kernel, a base initrd (hard-linked, not copied),
//!   one overlay initrd per node (the contract and the node's identity file: public, like
//!   everything in a bundle) and `manifest.json` (the contract crate's
//!   [`plasmacloud_contract::manifest`] types), written to a temporary directory and renamed
//!   into place.
//! - [`appliance`]: `netboot-image appliance` — the Debian test appliance: a bootable initrd made
//!   of a debootstrapped root filesystem, this project's binaries with their shared-library
//!   closure ([`elf`]), kernel modules ([`modules`]) and the rendered systemd units, packed in
//!   layers that are cached by content hash and compressed in parallel ([`layers`]). It runs
//!   from the initramfs itself: `/init` is systemd.
//! - [`newc`]: the cpio newc writer both use (and a reader for checks); pxe-server uses it too,
//!   for the per-boot enrollment initrd.
//!
//! The kernel unpacks concatenated (separately compressed) cpio archives in order, so a node
//! boots `kernel + base initrd + its overlay`, and the appliance initrd is itself a
//! concatenation of its layers.

pub mod appliance;
pub mod bundle;
pub mod elf;
pub mod error;
pub mod layers;
pub mod modules;
pub mod newc;

pub use error::ImageError;

/// Worker threads to use: `requested`, or the number of CPUs when it is 0.
pub fn jobs(requested: usize) -> usize {
    if requested > 0 {
        requested
    } else {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    }
}
