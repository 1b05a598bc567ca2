# services.iam: PlasmaCloud IAM (users, roles, Ed25519 tokens) on FlareDB, API 8080.
#
# Like the stores: the unit comes from the rendered unit files; this module adds a drop-in
# (user, settings as PLASMACLOUD_IAM_* variables that win over /etc/plasmacloud/iam.toml, which
# `firstboot configure` writes from the contract) and the firewall.
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
  cfg = config.services.iam;
  firstboot = config.services.plasmacloud.firstboot;
  # Read at evaluation only when that builds nothing (see contract.nix: readableAtEval).
  contract = contractLib.loadIfReadable firstboot.contract;
  contractPort =
    if contract == null then contractLib.defaultPorts.iam_api else (contractLib.ports contract).iam_api;
  settingsFormat = pkgs.formats.toml { };
  defaultDataDir = "${firstboot.stateDir}/iam";
  # The StateDirectory= of the rendered unit: writable without a drop-in.
  unitStateDir = "/var/lib/plasmacloud/iam";
in
{
  options.services.iam = {
    enable = mkEnableOption "PlasmaCloud IAM (unit iam.service from the rendered unit files)";

    package = mkOption {
      type = types.package;
      description = "The package with the iam-server binary (the units' ExecStart= uses it).";
    };

    user = mkOption {
      type = types.str;
      default = "iam";
      description = "User iam-server runs as (`root` keeps the unit as rendered).";
    };

    group = mkOption {
      type = types.str;
      default = "iam";
      description = "Group iam-server runs as.";
    };

    port = mkOption {
      type = types.port;
      default = contractPort;
      defaultText = literalExpression "the contract's ports.iam_api";
      description = "The API port (opened by `openFirewall`; must match the contract).";
    };

    dataDir = mkOption {
      type = types.str;
      default = defaultDataDir;
      defaultText = literalExpression ''"''${services.plasmacloud.firstboot.stateDir}/iam"'';
      description = ''
        IAM's state directory (its signing key, `signing-key.pem`, lives there). Users and
        roles live in FlareDB, not here.
      '';
    };

    signingKeyFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/var/lib/plasmacloud/iam/signing-key.pem";
      description = ''
        The Ed25519 signing key (created, mode 0600, when missing). null = where `firstboot
        configure` puts it (`<dataDir>/signing-key.pem`).
      '';
    };

    tokenTtl = mkOption {
      type = types.nullOr (types.strMatching "[0-9]+[smhd]?");
      default = null;
      example = "1h";
      description = "Token lifetime (60s to 7d); null = iam-server's default (1h).";
    };

    settings = mkOption {
      type = types.submodule { freeformType = settingsFormat.type; };
      default = { };
      example = {
        log_format = "json";
      };
      description = ''
        Keys of iam-server's TOML configuration (`listen_addr`, `flaredb` — a list of URLs,
        `signing_key`, `token_ttl`, `log_format`).

        Precedence, highest first: these settings (PLASMACLOUD_IAM_<KEY> variables in a
        drop-in; lists comma-separated), then /etc/plasmacloud/iam.toml as `firstboot
        configure` writes it from the contract, then iam-server's defaults. Also rendered with
        `pkgs.formats.toml` to /etc/plasmacloud/iam.settings.toml.
      '';
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open the API port.";
    };
  };

  config = mkIf cfg.enable (
    let
      signingKey =
        if cfg.signingKeyFile != null then
          cfg.signingKeyFile
        else if cfg.dataDir != defaultDataDir then
          "${cfg.dataDir}/signing-key.pem"
        else
          null;
      effectiveSettings =
        lib.optionalAttrs (signingKey != null) { signing_key = signingKey; }
        // lib.optionalAttrs (cfg.tokenTtl != null) { token_ttl = cfg.tokenTtl; }
        // cfg.settings;
    in
    {
      assertions = [
        {
          assertion = firstboot.enable;
          message = "services.iam needs services.plasmacloud.firstboot.enable: its unit requires the first-boot chain.";
        }
        {
          assertion = contract == null || cfg.port == contractPort;
          message = "services.iam.port (${toString cfg.port}) differs from the contract's ports.iam_api (${toString contractPort}); change the contract.";
        }
      ];

      users.users = mkIf (cfg.user == "iam") {
        iam = {
          isSystemUser = true;
          group = cfg.group;
          description = "PlasmaCloud IAM server";
        };
      };
      users.groups = mkIf (cfg.group == "iam") { iam = { }; };

      environment.etc."plasmacloud/iam.settings.toml" = mkIf (effectiveSettings != { }) {
        source = settingsFormat.generate "iam.settings.toml" effectiveSettings;
      };

      systemd.services.iam = {
        environment = contractLib.settingsToEnv "PLASMACLOUD_IAM" effectiveSettings;
        serviceConfig = {
          User = cfg.user;
          Group = cfg.group;
          ReadWritePaths = lib.optional (cfg.dataDir != unitStateDir) cfg.dataDir;
        };
      };

      systemd.tmpfiles.settings."10-iam" = mkIf (cfg.dataDir != unitStateDir) {
        ${cfg.dataDir}.d = {
          user = cfg.user;
          group = cfg.group;
          mode = "0700";
        };
      };

      networking.firewall.allowedTCPPorts = mkIf cfg.openFirewall [ cfg.port ];
    }
  );
}
