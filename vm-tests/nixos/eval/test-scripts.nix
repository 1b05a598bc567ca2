# Renders the nixosTest suites' Python test scripts with a stand-in pkgs (nixpkgs' lib plus
# stubs; runNixOSTest returns its argument), so vm-tests/nix-eval-tests.sh can byte-compile
# them. Checks that the Nix-to-Python interpolation makes valid Python — not that the driver
# runs it.
{ lib }:
let
  fakeDrv = name: {
    type = "derivation";
    inherit name;
    outPath = "/nix/store/00000000000000000000000000000000-${name}";
  };
  pkgs = {
    inherit lib;
    testers.runNixOSTest = test: test;
    writeText = name: _: "/nix/store/00000000000000000000000000000000-${name}";
    callPackage =
      f: _:
      if lib.hasSuffix "qemu-common.nix" (toString f) then import f { inherit lib; } else fakeDrv "called";
    qemu_test = fakeDrv "qemu";
    curl = fakeDrv "curl";
    # Only nixos/lib/qemu-common.nix is read from nixpkgs here.
    path = ./stub-nixpkgs;
  };
  args = {
    inherit pkgs;
    plasmacloudModule = { };
    packages = {
      netboot-image = fakeDrv "netboot-image";
      pxe-server = fakeDrv "pxe-server";
    };
  };
in
{
  cluster-bootstrap = (import ../cluster-bootstrap.nix args).testScript;
  pxe-boot = (import ../pxe-boot.nix args).testScript;
}
