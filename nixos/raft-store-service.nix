# The NixOS module of one Raft store (Chainfire or FlareDB): both take the same options and are
# configured the same way. chainfire.nix and flaredb.nix call this with their names and ports.
#
# The unit itself comes from the rendered unit files (services.plasmacloud.firstboot installs
# them); this module only adds a drop-in: the service user, the operator's `settings` as
# PLASMACLOUD_<SERVICE>_* variables (which win over the TOML `firstboot configure` writes),
# the node's TLS files (both ports speak mutual TLS), and the firewall. It reads services.plasmacloud.firstboot, so it is
# imported through firstboot.nix (which imports chainfire.nix, flaredb.nix and iam.nix; the
# import graph has no cycle, which the module system could not resolve).
{
  name,
  displayName,
  envPrefix,
  # Contract port keys and their defaults.
  apiPortKey,
  raftPortKey,
  gossipPortKey ? null,
}:
{
  config,
  lib,
  pkgs,
  ...
}:
let
  contractLib = import ./lib/contract.nix;
  service = import ./lib/service.nix { inherit lib; };
  inherit (lib) mkOption types literalMD;
  cfg = config.services.${name};
  firstboot = config.services.plasmacloud.firstboot;
  contract = contractLib.fromOption firstboot.contract;
  contractPort = key: (contractLib.ports contract).${key};
  settingsFormat = pkgs.formats.toml { };
  defaultDataDir = "${firstboot.stateDir}/${name}";
in
{
  options.services.${name} = service.coreOptions name "${name}-server" displayName // {
    apiPort = mkOption {
      type = types.port;
      default = contractPort apiPortKey;
      defaultText = literalMD "the contract's `ports.${apiPortKey}`";
      description = ''
        The API port. The contract decides the addresses (`firstboot configure` writes them);
        this option opens the firewall and must match the contract.
      '';
    };

    raftPort = mkOption {
      type = types.port;
      default = contractPort raftPortKey;
      defaultText = literalMD "the contract's `ports.${raftPortKey}`";
      description = "The Raft port (opened by `openFirewall`; must match the contract).";
    };

    extraPorts = mkOption {
      type = types.listOf types.port;
      default = lib.optional (gossipPortKey != null) (contractPort gossipPortKey);
      defaultText = literalMD (
        if gossipPortKey == null then "`[ ]`" else "the contract's `[ ports.${gossipPortKey} ]`"
      );
      description = "Further TCP ports the service uses (Chainfire's gossip port).";
    };

    dataDir = service.dataDirOption {
      inherit name;
      default = defaultDataDir;
      description = ''
        Where the Raft log and state machine live: on the data disk. The default is where
        `firstboot configure` puts it (the unit's StateDirectory); another path is passed as
        ${envPrefix}_DATA_DIR and made writable.
      '';
    };

    settings = mkOption {
      type = types.submodule { freeformType = settingsFormat.type; };
      default = { };
      example = {
        heartbeat_ms = 150;
        snapshot_logs = 20000;
      };
      description = ''
        Keys of ${name}-server's TOML configuration (`id`, `data_dir`, `api_addr`,
        `raft_addr`, `snapshot_logs`, `heartbeat_ms`, `request_timeout_ms`${lib.optionalString (name == "flaredb") ", `chainfire` (https URLs), `ts_retention_secs` (drop time-series points older than this many seconds; 0 or unset: keep every point)"});
        the TLS files are `tls.*`.

        Precedence, highest first: these settings (passed as ${envPrefix}_<KEY> variables in
        a drop-in), then /etc/plasmacloud/${name}.toml as `firstboot configure` writes it from
        the contract, then the binary's defaults. They are also rendered with
        `pkgs.formats.toml` to /etc/plasmacloud/${name}.settings.toml, for reading and for
        `${name}-server --config … --check`.
      '';
    };

    # Both ports speak mutual TLS with the node's certificate; there is no plaintext setting.
    tls = service.tlsOptions "${name}-server";

    openFirewall = service.openFirewallOption "Open the API, Raft (and gossip) TCP ports in the firewall.";
  };

  config = lib.mkIf cfg.enable (
    lib.mkMerge [
      {
        assertions = [
          {
            assertion = firstboot.enable;
            message = "services.${name} needs services.plasmacloud.firstboot.enable: its unit requires firstboot-configure.service.";
          }
          {
            assertion =
              contract == null
              || (cfg.apiPort == contractPort apiPortKey && cfg.raftPort == contractPort raftPortKey);
            message = "services.${name}: apiPort/raftPort (${toString cfg.apiPort}/${toString cfg.raftPort}) differ from the contract's ports.${apiPortKey}/${raftPortKey} (${toString (contractPort apiPortKey)}/${toString (contractPort raftPortKey)}); the contract decides the addresses — change it there.";
          }
        ];

        environment.etc."plasmacloud/${name}.settings.toml" = lib.mkIf (cfg.settings != { }) {
          source = settingsFormat.generate "${name}.settings.toml" cfg.settings;
        };

        # A drop-in on the rendered unit (never a second ExecStart=).
        systemd.services.${name} = {
          environment =
            contractLib.settingsToEnv envPrefix cfg.settings
            // lib.optionalAttrs (cfg.dataDir != defaultDataDir) {
              "${envPrefix}_DATA_DIR" = cfg.dataDir;
            };
        };
      }
      # Mutual TLS on both ports with the node's certificate.
      (service.tlsConfig cfg name envPrefix firstboot.stateDir)
      (service.account cfg name "${displayName} server")
      # The rendered unit's StateDirectory= is writable without a drop-in.
      (service.movedDataDir cfg name "/var/lib/plasmacloud/${name}")
      (service.firewall cfg {
        tcp = [
          cfg.apiPort
          cfg.raftPort
        ] ++ cfg.extraPorts;
      })
    ]
  );
}
