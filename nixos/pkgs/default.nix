# Every package of the flake, for one `pkgs`. `root` is the repository (a path); the version
# comes from the root Cargo.toml's [workspace.package].
{
  pkgs,
  root,
  contractLib ? import ../lib/contract.nix,
}:
let
  inherit (pkgs) lib;
  version = contractLib.workspaceVersion (root + "/Cargo.toml");

  # The Rust sources only: editing a module, a test suite or the docs does not rebuild Rust.
  src = lib.cleanSourceWith {
    name = "plasmacloud-netboot-source";
    src = lib.cleanSource root;
    filter =
      path: type:
      let
        rel = lib.removePrefix (toString root + "/") (toString path);
        top = lib.head (lib.splitString "/" rel);
      in
      !(lib.elem top [
        "target"
        "nixos"
        "docs"
        "flake.nix"
        "flake.lock"
      ])
      && !(lib.hasPrefix "vm-tests/nixos" rel)
      && !(lib.hasSuffix ".nix" rel);
  };

  workspace = pkgs.callPackage ./workspace.nix {
    inherit
      src
      version
      contractLib
      ;
    cargoLockFile = root + "/Cargo.lock";
  };

  # One binary of the workspace build, as its own package (what `services.*.package` takes).
  binary =
    pname: bin: description:
    pkgs.runCommand "${pname}-${version}"
      {
        inherit version;
        pname = pname;
        passthru.workspace = workspace;
        meta = {
          inherit description;
          mainProgram = bin;
          inherit (workspace.meta) license platforms;
        };
      }
      ''
        mkdir -p $out/bin
        ln -s ${workspace}/bin/${bin} $out/bin/${bin}
      '';
in
rec {
  inherit workspace;
  firstboot = binary "firstboot" "firstboot" "PlasmaCloud first-boot oneshots";
  chainfire = binary "chainfire" "chainfire-server" "Chainfire: Raft-replicated configuration store";
  flaredb = binary "flaredb" "flaredb-server" "FlareDB: Raft-replicated KV store";
  iam = binary "iam" "iam-server" "PlasmaCloud IAM";
  pxe-server = binary "pxe-server" "pxe-server" "PlasmaCloud provisioning server (DHCP, TFTP, HTTP boot)";
  netboot-image = binary "netboot-image" "netboot-image" "PlasmaCloud boot bundle builder";
  units = pkgs.callPackage ./units.nix { inherit firstboot chainfire flaredb iam; };
  ipxe = pkgs.callPackage ./ipxe.nix { };
}
