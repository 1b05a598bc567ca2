# iPXE with the first stages pxe-server serves: nixpkgs' ipxe builds undionly.kpxe, ipxe.efi
# and snp.efi, but `pxe-server check` wants snponly.efi too (UEFI clients get it: it drives the
# firmware's own network stack).
{ lib, stdenv, ipxe }:
ipxe.override {
  additionalTargets = lib.optionalAttrs stdenv.hostPlatform.isx86_64 {
    "bin-x86_64-efi/snponly.efi" = null;
  } // lib.optionalAttrs stdenv.hostPlatform.isAarch64 {
    "bin-arm64-efi/snponly.efi" = null;
  };
}
