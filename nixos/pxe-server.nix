# services.pxe-server: the provisioning server (DHCP full or proxy, TFTP, HTTP boot, per-node
# iPXE scripts, the cluster CA and node enrollment over HTTPS, management API over HTTPS). Not
# part of the node's unit graph, so this module declares its unit; the configuration goes to
# pxe-server as a TOML file (keys spelled like the flags).
#
# Its state directory holds the cluster CA (`pki/ca.key`) and the enrollment token log: a
# directory on this machine, 0700, owned by the service, never in the Nix store (which every
# user can read); assertions refuse a store path there and for the CA key to import.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  service = import ./lib/service.nix { inherit lib; };
  contractLib = import ./lib/contract.nix;
  inherit (lib) mkOption types literalExpression;
  cfg = config.services.pxe-server;
  settingsFormat = pkgs.formats.toml { };
  contract = contractLib.fromOption cfg.cluster;
  bootServer = contractLib.bootServer contract;
  onVarLib = lib.hasPrefix "/var/lib/" cfg.stateDir;
  pxeServer = lib.getExe' cfg.package "pxe-server";

  # On the first start with `ca` set and no CA in the state directory: import it (systemd
  # hands the files over as credentials, so root-only files work).
  importCa = pkgs.writeShellScript "pxe-server-import-ca" ''
    if [ -e ${lib.escapeShellArg "${cfg.stateDir}/pki/ca.key"} ]; then
      exit 0
    fi
    exec ${pxeServer} pki import --state-dir ${lib.escapeShellArg cfg.stateDir} \
      --cert "$CREDENTIALS_DIRECTORY/ca-cert" --key "$CREDENTIALS_DIRECTORY/ca-key"
  '';

  configFile = settingsFormat.generate "pxe-server.toml" (
    lib.filterAttrs (_: v: v != null) {
      interface = cfg.interface;
      mode = cfg.mode;
      cluster = "${contractLib.fileOf cfg.cluster}";
      bundle = "${cfg.bundle}";
      dhcp-range = cfg.dhcpRange;
      ipxe-dir = "${cfg.ipxeDir}";
      secure-boot-dir = cfg.secureBootDir;
      state-dir = cfg.stateDir;
      http-addr = cfg.httpAddr;
      management-addr = cfg.managementAddr;
      enrollment-addr = cfg.enrollmentAddr;
      enroll-token-ttl = cfg.enrollTokenTtl;
      dhcp-port = cfg.dhcpPort;
      tftp-port = cfg.tftpPort;
    }
    // cfg.settings
  );

  # A listener address; null = the boot interface's address and the contract's port.
  listenOption =
    what: port:
    mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "10.99.0.1:${toString (contractLib.bootServer null).${port}}";
      description = "${what} listener (`ip:port`); null = the interface's address and the contract's `boot_server.${port}`.";
    };
  # The port the firewall opens for a listener.
  listenPort = addr: port: if addr == null then bootServer.${port} else contractLib.portOfAddr addr;

  portOption =
    what: default:
    mkOption {
      type = types.port;
      inherit default;
      description = "${what} port.";
    };

  # FIRST-LAST, two IPv4 addresses (pxe-server checks them).
  addressRange = types.strMatching "[0-9.]+ *- *[0-9.]+";

  # pxe-server's capabilities: ports below 1024, raw sockets (RA responder), binding to the
  # boot interface and sending broadcasts; nothing more.
  capabilities = [
    "CAP_NET_BIND_SERVICE"
    "CAP_NET_RAW"
    "CAP_NET_ADMIN"
    "CAP_NET_BROADCAST"
  ];
in
{
  options.services.pxe-server = service.coreOptions "pxe-server" "pxe-server" "the PlasmaCloud provisioning server" // {
    interface = mkOption {
      type = types.str;
      example = "eth1";
      description = "The boot network interface; it must carry the contract's `boot_server.address`.";
    };

    mode = mkOption {
      type = types.enum [
        "full"
        "proxy"
      ];
      default = "full";
      description = ''
        `full`: we are the segment's DHCP server (the contract's fixed addresses plus
        `dhcpRange` for unknown machines). `proxy`: another server assigns addresses; we
        answer PXE clients with boot information only (UDP 67 and 4011).
      '';
    };

    cluster = mkOption {
      type = contractLib.optionType lib;
      example = literalExpression "./cluster-config.json";
      description = ''
        The cluster contract (cluster-config.json), as for
        `services.plasmacloud.firstboot.contract`: a file in your flake's source, the
        contract as an attribute set, or its JSON text are read at evaluation (the firewall
        opens the contract's `boot_server` ports); a path on this machine or a store path a
        derivation builds is passed to pxe-server as it is.
      '';
    };

    bundle = mkOption {
      type = types.path;
      description = ''
        The bundle directory (`netboot-image bundle --cluster … --netboot … --out DIR`). A
        bundle is public (kernel, initrds, the contract and each node's name; no key, password
        or token): one built by Nix (`nixos/pkgs/bundle.nix`) may live in the store, or give a
        directory built on this host as a string.
      '';
    };

    dhcpRange = mkOption {
      type = types.nullOr addressRange;
      default = null;
      example = "10.99.0.100-10.99.0.200";
      description = "Pool for machines not in the contract (full mode only).";
    };

    ipxeDir = mkOption {
      type = types.path;
      default = pkgs.callPackage ./pkgs/ipxe.nix { };
      defaultText = lib.literalMD "nixpkgs' `ipxe` with `snponly.efi` added (`nixos/pkgs/ipxe.nix`)";
      description = "iPXE first stages (undionly.kpxe, snponly.efi, ipxe.efi); also the TFTP root.";
    };

    secureBootDir = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/var/lib/pxe-server-secure-boot";
      description = ''
        Boot x86-64 UEFI PXE machines through the Secure Boot chain instead of iPXE: a
        directory holding `shimx64.efi` (a Microsoft-signed shim) and `grubx64.efi` (a signed
        GRUB netboot image, e.g. Debian's `grubnetx64.efi.signed`). nixpkgs carries no
        Microsoft-signed shim, so the files come from the distribution that signed them. The
        bundle's kernel must be signed by a key the machines trust. null = iPXE.
      '';
    };

    stateDir = mkOption {
      type = types.strMatching "/.*";
      default = "/var/lib/pxe-server";
      description = ''
        pxe-server's state: the leases, the cluster CA (`pki/ca.key` 0600, `pki/ca.crt`, the
        log of issued certificates; made on the first start when absent) and the enrollment
        token log (`enroll/`). It holds secrets, so it is a directory on this machine, never
        in the Nix store (an assertion says so), mode 0700 and owned by the service: under
        /var/lib/ the unit's StateDirectory=, elsewhere made by tmpfiles. Run the `pxe-server
        pki` commands on it as the service's user (`sudo -u pxe-server pxe-server pki issue
        --state-dir … --node NAME --cluster … --out DIR`), so the files they add stay the
        service's.
      '';
    };

    ca = {
      certFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/run/keys/plasmacloud-ca.crt";
        description = ''
          An existing cluster CA certificate (PEM) to import on the first start, when the state
          directory holds no CA (`pxe-server pki import`); null = pxe-server makes its own. For
          a contract that pins `pki.ca_sha256`, the pinned CA.
        '';
      };
      keyFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/run/keys/plasmacloud-ca.key";
        description = ''
          The private key of `ca.certFile` (PEM), handed to the import as a systemd credential.
          A secret: a path on this machine, never in the Nix store (an assertion refuses one).
        '';
      };
    };

    httpAddr = listenOption "Boot-plane (HTTP)" "http_port";
    managementAddr = listenOption "Management (HTTPS: status, boot events, metrics)" "management_port";
    enrollmentAddr = listenOption "Enrollment (HTTPS: nodes trade this boot's token and a CSR for their certificate)" "enrollment_port";

    enrollTokenTtl = mkOption {
      type = types.nullOr (
        types.addCheck types.ints.unsigned (n: n >= 60)
        // {
          description = "integer of at least 60 (seconds)";
        }
      );
      default = null;
      example = 1800;
      description = ''
        Seconds a node has from fetching its boot script to enrolling with the token it
        brought (`enroll-token-ttl`); null = pxe-server's default (3600).
      '';
    };
    dhcpPort = portOption "DHCP server" 67;
    tftpPort = portOption "TFTP" 69;

    settings = mkOption {
      type = types.submodule { freeformType = settingsFormat.type; };
      default = { };
      example = {
        unknown-mac = "ignore";
        ipv6-ra = "off";
        lease-secs = 600;
      };
      description = ''
        Further keys of pxe-server's TOML file (`unknown-mac`, `ipv6-ra`, `lease-secs`,
        `router`, `tftp-max-transfers`, `tftp-max-per-client`, `tftp-max-window`,
        `log-format`); they win over the options above. pxe-server refuses unknown keys.
      '';
    };

    openFirewall = service.openFirewallOption "Open, on `interface` only, UDP 67, 69 and 4011 and the boot-plane, management and enrollment TCP ports.";
  };

  config = lib.mkIf cfg.enable (
    lib.mkMerge [
      {
        assertions = [
          {
            assertion = cfg.mode == "full" || cfg.dhcpRange == null;
            message = "services.pxe-server: proxy mode assigns no addresses; drop dhcpRange or use mode = \"full\".";
          }
          {
            assertion = (cfg.ca.certFile == null) == (cfg.ca.keyFile == null);
            message = "services.pxe-server.ca: certFile and keyFile go together (a CA is imported with its key).";
          }
          (service.notInStore "services.pxe-server.stateDir" cfg.stateDir)
          (service.notInStore "services.pxe-server.settings.state-dir" (cfg.settings.state-dir or null))
          (service.notInStore "services.pxe-server.ca.keyFile" cfg.ca.keyFile)
        ]
        ++ map (p: {
          assertion = false;
          message = "services.pxe-server.cluster: ${p}";
        }) (if contract == null then [ ] else contractLib.problems contract);

        environment.systemPackages = [ cfg.package ];

        systemd.services.pxe-server = {
          description = "PlasmaCloud provisioning server (DHCP, TFTP, HTTP boot)";
          wantedBy = [ "multi-user.target" ];
          # The interface must have its address before `serve` looks it up.
          # (network-addresses-IF.service exists with scripted networking; After= on a missing
          # unit is ignored.) A missing address is a configuration error (exit 2, no restart).
          after = [
            "network-online.target"
            "sys-subsystem-net-devices-${cfg.interface}.device"
            "network-addresses-${cfg.interface}.service"
          ];
          wants = [ "network-online.target" ];
          bindsTo = [ "sys-subsystem-net-devices-${cfg.interface}.device" ];
          serviceConfig = {
            ExecStartPre = lib.optional (cfg.ca.keyFile != null) "${importCa}" ++ [
              "${pxeServer} check --config ${configFile}"
            ];
            ExecStart = "${pxeServer} serve --config ${configFile}";
            LoadCredential = lib.optionals (cfg.ca.keyFile != null) [
              "ca-cert:${cfg.ca.certFile}"
              "ca-key:${cfg.ca.keyFile}"
            ];
            Restart = "on-failure";
            RestartSec = 2;
            # Exit 2: the configuration is wrong; restarting will not fix it.
            RestartPreventExitStatus = 2;
            # The CA and the token log: the service's alone.
            StateDirectory = lib.mkIf onVarLib (lib.removePrefix "/var/lib/" cfg.stateDir);
            StateDirectoryMode = "0700";
            ReadWritePaths = lib.optional (!onVarLib) cfg.stateDir;
            AmbientCapabilities = capabilities;
            CapabilityBoundingSet = capabilities;
            NoNewPrivileges = true;
            ProtectSystem = "strict";
            ProtectHome = true;
            PrivateTmp = true;
            PrivateDevices = true;
            ProtectKernelTunables = true;
            ProtectKernelModules = true;
            ProtectControlGroups = true;
            RestrictAddressFamilies = [
              "AF_INET"
              "AF_INET6"
              "AF_NETLINK"
              "AF_PACKET"
              "AF_UNIX"
            ];
            RestrictNamespaces = true;
            RestrictSUIDSGID = true;
            LockPersonality = true;
            MemoryDenyWriteExecute = true;
            SystemCallArchitectures = "native";
          };
        };
      }
      {
        # A state directory elsewhere: made 0700 for the service at boot.
        systemd.tmpfiles.settings."10-pxe-server" = lib.mkIf (!onVarLib) {
          ${cfg.stateDir}.d = {
            inherit (cfg) user group;
            mode = "0700";
          };
        };
      }
      (service.account cfg "pxe-server" "PlasmaCloud provisioning server")
      (service.firewallOnInterface cfg {
        udp = lib.unique [
          cfg.dhcpPort
          cfg.tftpPort
          4011
        ];
        tcp = [
          (listenPort cfg.httpAddr "http_port")
          (listenPort cfg.managementAddr "management_port")
          (listenPort cfg.enrollmentAddr "enrollment_port")
        ];
      })
    ]
  );
}
