# The flake's outputs evaluated against a stand-in nixpkgs (nixpkgs' lib, a mini callPackage,
# derivation builders that return their arguments): the output names the design fixes, the
# module package defaults, and what the package derivations are given (version from Cargo.toml,
# the cargo packages, the RocksDB linking rule). Nothing is built.
{ lib }:
let
  root = ../../..;
  flake = import (root + "/flake.nix");

  fakeDrv = name: extra: {
    type = "derivation";
    inherit name;
    outPath = "/nix/store/00000000000000000000000000000000-${name}";
  } // extra;

  pkgsFor =
    system: rocksdbVersion:
    let
      self = {
        inherit lib;
        stdenv.hostPlatform = {
          inherit system;
          isx86_64 = system == "x86_64-linux";
          isAarch64 = system == "aarch64-linux";
          qemuArch = lib.head (lib.splitString "-" system);
        };
        callPackage =
          f: args:
          let
            fn = if lib.isFunction f then f else import f;
          in
          fn (builtins.intersectAttrs (lib.functionArgs fn) self // args);
        rustPlatform = {
          buildRustPackage = attrs: fakeDrv attrs.pname attrs // attrs.passthru;
          bindgenHook = fakeDrv "bindgen-hook" { };
        };
        runCommand = name: attrs: script: fakeDrv name (attrs // attrs.passthru or { } // { inherit script; });
        symlinkJoin = attrs: fakeDrv attrs.name attrs;
        writeText = name: _: "/nix/store/00000000000000000000000000000000-${name}";
        rocksdb = fakeDrv "rocksdb" { version = rocksdbVersion; };
        ipxe = fakeDrv "ipxe" { override = args: fakeDrv "ipxe-snponly" { inherit args; }; };
        pkg-config = fakeDrv "pkg-config" { };
        mkShell = attrs: fakeDrv "shell" attrs;
        nixfmt-rfc-style = fakeDrv "nixfmt" { };
      };
    in
    self;

  nixpkgsWith = rocksdbVersion: {
    lib = lib // {
      nixosSystem = args: {
        inherit args;
        config.system = {
          build = lib.genAttrs [
            "kernel"
            "netbootRamdisk"
            "netbootIpxeScript"
          ] (n: fakeDrv n { });
          boot.loader.kernelFile =
            if
              lib.any (m: (m.nixpkgs.hostPlatform or null) == "aarch64-linux") (
                lib.filter lib.isAttrs args.modules
              )
            then
              "Image"
            else
              "bzImage";
        };
      };
    };
    legacyPackages = lib.genAttrs [ "x86_64-linux" "aarch64-linux" ] (s: pkgsFor s rocksdbVersion);
    outPath = "/nonexistent-nixpkgs";
  };

  outputsWith =
    rocksdbVersion:
    let
      out = flake.outputs {
        self = out;
        nixpkgs = nixpkgsWith rocksdbVersion;
      };
    in
    out;

  o = outputsWith "10.4.2";
  old = outputsWith "9.10.0";
  x86 = o.packages.x86_64-linux;
  cargoVersion = (builtins.fromTOML (builtins.readFile (root + "/Cargo.toml"))).workspace.package.version;

  # nixosModules.default in the module stand-in of modules.nix, for its package defaults.
  moduleDefaults =
    let
      cfg =
        (lib.evalModules {
          modules = [
            {
              freeformType = lib.types.lazyAttrsOf lib.types.anything;
            }
            o.nixosModules.default
          ];
          specialArgs.pkgs = pkgsFor "x86_64-linux" "10.4.2" // {
            formats.toml = _: {
              type = lib.types.attrsOf lib.types.anything;
              generate = name: _: "/nix/store/00000000000000000000000000000000-${name}";
            };
          };
        }).config;
    in
    {
      chainfire = cfg.services.chainfire.package.name;
      pxe-server = cfg.services.pxe-server.package.name;
      firstboot = cfg.services.plasmacloud.firstboot.package.name;
    };
in
[
  {
    name = "flake: the packages the design names";
    expected = [
      "chainfire"
      "default"
      "firstboot"
      "flaredb"
      "iam"
      "ipxe"
      "netboot"
      "netboot-image"
      "pxe-server"
      "units"
    ];
    actual = lib.attrNames x86;
  }
  {
    name = "flake: aarch64-linux has the same packages";
    expected = lib.attrNames x86;
    actual = lib.attrNames o.packages.aarch64-linux;
  }
  {
    name = "flake: nixosConfigurations node01..node03, netboot and pxe-host";
    expected = [
      "netboot"
      "node01"
      "node02"
      "node03"
      "pxe-host"
    ];
    actual = lib.attrNames o.nixosConfigurations;
  }
  {
    name = "flake: checks are the nixosTest suites, the eval tests and the options doc";
    expected = [
      "cluster-bootstrap"
      "nix-eval"
      "options-doc"
      "pxe-boot"
    ];
    actual = lib.attrNames o.checks.x86_64-linux;
  }
  {
    name = "flake: nixosModules";
    expected = [
      "chainfire"
      "default"
      "firstboot"
      "flaredb"
      "iam"
      "netboot-base"
      "pxe-server"
    ];
    actual = lib.attrNames o.nixosModules;
  }
  {
    name = "flake: the version comes from Cargo.toml";
    expected = [
      cargoVersion
      cargoVersion
    ];
    actual = [
      x86.default.version
      x86.chainfire.version
    ];
  }
  {
    name = "flake: one workspace build of the six cargo packages";
    expected = [
      "--package=firstboot"
      "--package=chainfire"
      "--package=flaredb"
      "--package=iam"
      "--package=pxe-server"
      "--package=netboot-image"
    ];
    actual = x86.default.cargoBuildFlags;
  }
  {
    name = "flake: nixpkgs' RocksDB is linked when its major.minor matches librocksdb-sys";
    expected = {
      match = {
        ROCKSDB_LIB_DIR = "/nix/store/00000000000000000000000000000000-rocksdb/lib";
        ROCKSDB_INCLUDE_DIR = "/nix/store/00000000000000000000000000000000-rocksdb/include";
      };
      mismatch = { };
    };
    actual = {
      match = x86.default.env;
      mismatch = old.packages.x86_64-linux.default.env;
    };
  }
  {
    name = "flake: the per-binary packages expose their binary";
    expected = [
      "chainfire-server"
      "flaredb-server"
      "iam-server"
      "firstboot"
      "pxe-server"
      "netboot-image"
    ];
    actual = map (p: x86.${p}.meta.mainProgram) [
      "chainfire"
      "flaredb"
      "iam"
      "firstboot"
      "pxe-server"
      "netboot-image"
    ];
  }
  {
    name = "flake: units are rendered by `firstboot units` at build time";
    expected = true;
    actual = lib.hasInfix "/bin/firstboot units --out $out/lib/systemd/system --bindir" x86.units.script;
  }
  {
    name = "flake: .#netboot links bzImage, initrd and netboot.ipxe (and Image on aarch64)";
    expected = [
      true
      true
      true
      true
      true
    ];
    actual = map (f: lib.hasInfix "$out/${f}\n" x86.netboot.script) [
      "bzImage"
      "initrd"
      "netboot.ipxe"
    ]
    ++ [
      (!lib.hasInfix "$out/Image\n" x86.netboot.script)
      (lib.hasInfix "$out/Image\n" o.packages.aarch64-linux.netboot.script)
    ];
  }
  {
    name = "flake: iPXE gets snponly.efi for pxe-server";
    expected = {
      "bin-x86_64-efi/snponly.efi" = null;
    };
    actual = x86.ipxe.args.additionalTargets;
  }
  {
    name = "flake: nixosModules.default sets the packages";
    expected = {
      chainfire = "chainfire-${cargoVersion}";
      pxe-server = "pxe-server-${cargoVersion}";
      firstboot = "firstboot-${cargoVersion}";
    };
    actual = moduleDefaults;
  }
  {
    name = "flake: the node configurations use the modules and their node file";
    expected = [
      true
      true
      true
    ];
    actual = map (
      n:
      lib.any (m: builtins.isPath m && lib.hasSuffix "nixos/nodes/${n}/configuration.nix" (toString m))
        o.nixosConfigurations.${n}.args.modules
    ) [
      "node01"
      "node02"
      "node03"
    ];
  }
]
