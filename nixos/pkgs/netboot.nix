# `.#netboot`: exactly the three files `netboot-image bundle --netboot` reads — the kernel
# (bzImage), the netboot ramdisk (initrd, with the squashfs Nix store inside) and nixpkgs'
# netboot.ipxe (whose kernel line carries init= and the kernel parameters). On platforms whose
# kernel file is not bzImage (aarch64: Image), the kernel is also there under the name
# netboot.ipxe gives it, which is the name netboot-image looks for.
{
  lib,
  runCommand,
  nixos,
}:
let
  build = nixos.config.system.build;
  kernelFile = nixos.config.system.boot.loader.kernelFile;
in
runCommand "plasmacloud-netboot"
  {
    passthru = { inherit nixos; };
  }
  ''
    mkdir -p $out
    ln -s ${build.kernel}/${kernelFile} $out/bzImage
    ${lib.optionalString (kernelFile != "bzImage") ''
      ln -s ${build.kernel}/${kernelFile} $out/${kernelFile}
    ''}
    ln -s ${build.netbootRamdisk}/initrd $out/initrd
    ln -s ${build.netbootIpxeScript}/netboot.ipxe $out/netboot.ipxe
  ''
