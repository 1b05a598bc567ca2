//! `vm-rack`: a rack of QEMU VMs that PXE-boot from our own `pxe-server` and become a ready
//! PlasmaCloud cluster (issue 8). `vm-tests/rack SCENARIO` builds the binaries and runs
//! `vm-rack SCENARIO`.
//!
//! The outer process ([`prepare`]) renders the units with `firstboot units`, builds the Debian
//! appliance and the bundle with `netboot-image` (contract and IAM credential generated for the
//! rack), and creates a network namespace of its own ([`prepare::network`]: bridge
//! 10.99.0.1/24, one tap per VM, made with `plasmacloud-testkit`'s `netns`). It then runs itself
//! inside the namespace ([`rack`]): pxe-server in full DHCP mode (IPv6 RA on), one sparse raw
//! data disk and one TCG QEMU per node (`-boot n`, virtio-net with Debian's iPXE ROM, MACs
//! from the contract), a live one-line-per-node view fed by the server's
//! boot events, the nodes' phase reports and the serial consoles, host-side checks through the
//! services' APIs, the scenario's own steps, and a boot timeline per node. Whatever happens
//! (success, failure, Ctrl-C), the namespace and everything in it go away, and the last line is
//! `cluster-ready: <k>/<n> nodes in <s> s`.

pub mod prepare;
pub mod rack;
pub mod scenario;
