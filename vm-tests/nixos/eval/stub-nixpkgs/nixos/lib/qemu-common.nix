# Stand-in for nixpkgs' nixos/lib/qemu-common.nix in the local test-script rendering.
{ lib, ... }:
{
  qemuBinary = qemu: "${qemu}/bin/qemu-kvm";
}
