# Every PlasmaCloud NixOS module (the flake's nixosModules.default adds the package defaults).
# Nothing is enabled by importing this.
{
  imports = [
    ./firstboot.nix
    ./chainfire.nix
    ./flaredb.nix
    ./iam.nix
    ./pxe-server.nix
  ];
}
