{
  description = "PlasmaCloud netboot: PXE-boot a rack into a running PlasmaCloud cluster";

  # One input: a stable NixOS release.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.05";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      contractLib = import ./nixos/lib/contract.nix;

      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});

      # The derivations live in nixos/pkgs; the flake only wires them.
      packagesFor = pkgs: import ./nixos/pkgs { inherit pkgs contractLib; root = ./.; };

      # Package defaults for the modules, from this flake's packages for the host platform.
      packageOptions = {
        firstboot = "services.plasmacloud.firstboot.package";
        chainfire = "services.chainfire.package";
        flaredb = "services.flaredb.package";
        iam = "services.iam.package";
        pxe-server = "services.pxe-server.package";
      };
      withPackageDefaults =
        modules: names:
        { pkgs, ... }:
        {
          imports = modules;
          config = lib.mkMerge (
            map (
              name:
              lib.setAttrByPath (lib.splitString "." packageOptions.${name}) (
                lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.${name}
              )
            ) names
          );
        };
      nodeModules = [
        "firstboot"
        "chainfire"
        "flaredb"
        "iam"
      ];

      # The netboot image's NixOS system for one platform.
      netbootSystem =
        system:
        lib.nixosSystem {
          modules = [
            { nixpkgs.hostPlatform = system; }
            self.nixosModules.default
            self.nixosModules.netboot-base
          ];
        };

      # An installed x86_64 machine with every PlasmaCloud module (nothing enabled by that).
      installedSystem =
        configuration:
        lib.nixosSystem {
          modules = [
            { nixpkgs.hostPlatform = "x86_64-linux"; }
            self.nixosModules.default
            configuration
          ];
        };
      nodeSystem = name: installedSystem ./nixos/nodes/${name}/configuration.nix;
    in
    {
      packages = forAllSystems (
        pkgs:
        let
          p = packagesFor pkgs;
        in
        {
          inherit (p)
            chainfire
            flaredb
            iam
            firstboot
            pxe-server
            netboot-image
            units
            ipxe
            ;
          # bzImage, initrd, netboot.ipxe of nixosConfigurations.netboot (for this platform).
          netboot = pkgs.callPackage ./nixos/pkgs/netboot.nix {
            nixos = netbootSystem pkgs.stdenv.hostPlatform.system;
          };
          # Every binary of the workspace, from one build.
          default = p.workspace;
        }
      );

      nixosModules = {
        default = withPackageDefaults [ ./nixos/default.nix ] (nodeModules ++ [ "pxe-server" ]);
        # The node services come as one chain: each of these brings the first-boot module and
        # the three services (enable what you run).
        firstboot = withPackageDefaults [ ./nixos/firstboot.nix ] nodeModules;
        chainfire = withPackageDefaults [ ./nixos/firstboot.nix ] nodeModules;
        flaredb = withPackageDefaults [ ./nixos/firstboot.nix ] nodeModules;
        iam = withPackageDefaults [ ./nixos/firstboot.nix ] nodeModules;
        pxe-server = withPackageDefaults [ ./nixos/pxe-server.nix ] [ "pxe-server" ];
        netboot-base = ./nixos/netboot-base.nix;
      };

      nixosConfigurations = {
        node01 = nodeSystem "node01";
        node02 = nodeSystem "node02";
        node03 = nodeSystem "node03";
        netboot = netbootSystem "x86_64-linux";
        # The provisioning server itself (docs/nix.md's example).
        pxe-host = installedSystem ./nixos/pxe-host/configuration.nix;
      };

      # The nixosTest suites (x86_64: the pxe-boot suite boots SeaBIOS + iPXE), and the
      # pure/module evaluation tests that also run without nixpkgs.
      checks.x86_64-linux =
        let
          pkgs = nixpkgs.legacyPackages.x86_64-linux;
          args = {
            inherit pkgs;
            plasmacloudModule = self.nixosModules.default;
            packages = self.packages.x86_64-linux;
          };
        in
        {
          # Installed nodes with certificates issued offline in the test script.
          cluster-bootstrap = import ./vm-tests/nixos/cluster-bootstrap.nix args;
          # Netbooted nodes that enroll with the pxe-server VM.
          pxe-boot = import ./vm-tests/nixos/pxe-boot.nix args;
          # docs/options.md against the modules' options (nixosOptionsDoc); its passthru has
          # the page (`markdown`) and nixpkgs' optionsJSON/optionsCommonMark.
          options-doc =
            (import ./nixos/options-doc.nix {
              inherit pkgs;
              root = ./.;
              module = self.nixosModules.default;
            }).check;
          nix-eval = pkgs.runCommand "plasmacloud-nix-eval-tests" {
            nativeBuildInputs = [
              pkgs.nix
              pkgs.python3
              pkgs.findutils
            ];
          } ''
            export HOME=$TMPDIR NIX_STATE_DIR=$TMPDIR/nix-state NIX_LOG_DIR=$TMPDIR/nix-log
            cp -r ${./.} src && chmod -R u+w src && cd src
            NIXPKGS_LIB=${nixpkgs}/lib bash vm-tests/nix-eval-tests.sh
            touch $out
          '';
        };

      devShells = forAllSystems (
        pkgs:
        let
          p = packagesFor pkgs;
        in
        {
          default = pkgs.mkShell {
            # The Rust toolchain, bindgen's libclang, and the Nix-side equivalents of the
            # Debian packages vm-tests/install-deps installs (udhcpc: busybox, left out so it
            # does not shadow coreutils; isc-dhcp-client: dhcpcd, the ISC client left nixpkgs).
            packages = with pkgs; [
              cargo
              rustc
              clippy
              rustfmt
              pkg-config
              clang
              rocksdb
              cpio
              zstd
              debootstrap
              e2fsprogs
              xfsprogs
              util-linux
              iproute2
              curl
              dnsmasq
              tftp-hpa
              atftp
              dhcpcd
              nginx
              (pkgs.etcd_3_4 or pkgs.etcd)
              qemu
              p.ipxe
              OVMF.fd
              systemd
              nix
              nixfmt-rfc-style
              python3
              jq
            ];
            env =
              {
                LIBCLANG_PATH = "${pkgs.llvmPackages.libclang.lib}/lib";
              }
              // lib.optionalAttrs p.workspace.useSystemRocksdb {
                ROCKSDB_LIB_DIR = "${pkgs.rocksdb}/lib";
                ROCKSDB_INCLUDE_DIR = "${pkgs.rocksdb}/include";
              };
          };
        }
      );

      formatter = forAllSystems (pkgs: pkgs.nixfmt-rfc-style);
    };
}
