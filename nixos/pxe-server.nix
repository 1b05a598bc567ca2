# services.pxe-server: the provisioning server (DHCP full or proxy, TFTP, HTTP boot, per-node
# iPXE scripts, management API). Not part of the node's unit graph, so this module declares
# its unit; the configuration goes to pxe-server as a TOML file (keys spelled like the flags).
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib)
    mkOption
    mkEnableOption
    mkIf
    types
    literalExpression
    ;
  contractLib = import ./lib/contract.nix;
  cfg = config.services.pxe-server;
  settingsFormat = pkgs.formats.toml { };

  # Read at evaluation only when that builds nothing (see contract.nix: readableAtEval).
  contract = contractLib.loadIfReadable cfg.cluster;
  bootServer =
    if contract == null then
      {
        http_port = 8081;
        management_port = 8082;
      }
    else
      contractLib.bootServer contract;

  configFile = settingsFormat.generate "pxe-server.toml" (
    lib.filterAttrs (_: v: v != null) {
      interface = cfg.interface;
      mode = cfg.mode;
      cluster = toString cfg.cluster;
      bundle = toString cfg.bundle;
      dhcp-range = cfg.dhcpRange;
      ipxe-dir = toString cfg.ipxeDir;
      state-dir = cfg.stateDir;
      http-addr = cfg.httpAddr;
      management-addr = cfg.managementAddr;
      dhcp-port = cfg.dhcpPort;
      tftp-port = cfg.tftpPort;
    }
    // cfg.settings
  );
in
{
  options.services.pxe-server = {
    enable = mkEnableOption "the PlasmaCloud provisioning server";

    package = mkOption {
      type = types.package;
      description = "The package with the pxe-server binary.";
    };

    interface = mkOption {
      type = types.str;
      example = "eth1";
      description = "The boot network interface; it must carry the contract's boot_server.address.";
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
      type = types.path;
      example = literalExpression "./examples/cluster-3.json";
      description = "The cluster contract (cluster-config.json).";
    };

    bundle = mkOption {
      type = types.path;
      description = ''
        The bundle directory (`netboot-image bundle --cluster … --netboot … --out DIR`). A
        bundle built by Nix lives in the world-readable store: fine for contracts without
        secrets; with secrets, build it outside the store and give its path as a string.
      '';
    };

    dhcpRange = mkOption {
      type = types.nullOr (types.strMatching "[0-9.]+ *- *[0-9.]+");
      default = null;
      example = "10.99.0.100-10.99.0.200";
      description = "Pool for machines not in the contract (full mode only).";
    };

    ipxeDir = mkOption {
      type = types.path;
      default = pkgs.callPackage ./pkgs/ipxe.nix { };
      defaultText = literalExpression "pkgs.ipxe with snponly.efi added";
      description = "iPXE first stages (undionly.kpxe, snponly.efi, ipxe.efi); also the TFTP root.";
    };

    stateDir = mkOption {
      type = types.str;
      default = "/var/lib/pxe-server";
      description = "Where leases are persisted.";
    };

    httpAddr = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "10.99.0.1:8081";
      description = "Boot-plane listener; null = the interface's address and the contract's boot_server.http_port.";
    };

    managementAddr = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "10.99.0.1:8082";
      description = "Management listener (status, boot events, metrics); null = interface address and boot_server.management_port.";
    };

    dhcpPort = mkOption {
      type = types.port;
      default = 67;
      description = "DHCP server port.";
    };

    tftpPort = mkOption {
      type = types.port;
      default = 69;
      description = "TFTP port.";
    };

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
        `router`, `tftp-max-transfers`, `tftp-max-window`, `log-format`); they win over the
        options above. pxe-server refuses unknown keys.
      '';
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open, on `interface` only, UDP 67, 69 and 4011 and the boot-plane and management TCP ports.";
    };

    user = mkOption {
      type = types.str;
      default = "pxe-server";
      description = "User pxe-server runs as (it gets the network capabilities it needs, nothing else).";
    };

    group = mkOption {
      type = types.str;
      default = "pxe-server";
      description = "Group pxe-server runs as.";
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = cfg.mode == "full" || cfg.dhcpRange == null;
        message = "services.pxe-server: proxy mode assigns no addresses; drop dhcpRange or use mode = \"full\".";
      }
    ];

    users.users = mkIf (cfg.user == "pxe-server") {
      pxe-server = {
        isSystemUser = true;
        group = cfg.group;
        description = "PlasmaCloud provisioning server";
      };
    };
    users.groups = mkIf (cfg.group == "pxe-server") { pxe-server = { }; };

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
        ExecStartPre = "${lib.getExe' cfg.package "pxe-server"} check --config ${configFile}";
        ExecStart = "${lib.getExe' cfg.package "pxe-server"} serve --config ${configFile}";
        Restart = "on-failure";
        RestartSec = 2;
        # Exit 2: the configuration is wrong; restarting will not fix it.
        RestartPreventExitStatus = 2;
        User = cfg.user;
        Group = cfg.group;
        StateDirectory = lib.mkIf (lib.hasPrefix "/var/lib/" cfg.stateDir) (
          lib.removePrefix "/var/lib/" cfg.stateDir
        );
        StateDirectoryMode = "0700";
        ReadWritePaths = lib.optional (!lib.hasPrefix "/var/lib/" cfg.stateDir) cfg.stateDir;
        # Ports below 1024, raw sockets (RA responder), binding to the boot interface and
        # sending broadcasts: nothing more.
        AmbientCapabilities = [
          "CAP_NET_BIND_SERVICE"
          "CAP_NET_RAW"
          "CAP_NET_ADMIN"
          "CAP_NET_BROADCAST"
        ];
        CapabilityBoundingSet = [
          "CAP_NET_BIND_SERVICE"
          "CAP_NET_RAW"
          "CAP_NET_ADMIN"
          "CAP_NET_BROADCAST"
        ];
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

    networking.firewall.interfaces.${cfg.interface} = mkIf cfg.openFirewall {
      allowedUDPPorts = lib.unique [
        cfg.dhcpPort
        cfg.tftpPort
        4011
      ];
      allowedTCPPorts = [
        (if cfg.httpAddr == null then bootServer.http_port else contractLib.portOfAddr cfg.httpAddr)
        (
          if cfg.managementAddr == null then
            bootServer.management_port
          else
            contractLib.portOfAddr cfg.managementAddr
        )
      ];
    };
  };
}
