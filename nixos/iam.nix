# services.iam: PlasmaCloud IAM (users, roles, Ed25519 tokens) on FlareDB, API 8080.
#
# Like the stores: the unit comes from the rendered unit files; this module adds a drop-in
# (user, settings as PLASMACLOUD_IAM_* variables that win over /etc/plasmacloud/iam.toml, which
# `firstboot configure` writes from the contract; the node's TLS files: IAM serves HTTPS with
# the node's certificate and reaches FlareDB and Chainfire over mutual TLS) and the firewall.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib) mkOption types;
  contractLib = import ./lib/contract.nix;
  service = import ./lib/service.nix { inherit lib; };
  cfg = config.services.iam;
  firstboot = config.services.plasmacloud.firstboot;
  contract = contractLib.fromOption firstboot.contract;
  contractPort = (contractLib.ports contract).iam_api;
  settingsFormat = pkgs.formats.toml { };
  defaultDataDir = "${firstboot.stateDir}/iam";
in
{
  options.services.iam = service.coreOptions "iam" "iam-server" "PlasmaCloud IAM" // {
    port = mkOption {
      type = types.port;
      default = contractPort;
      defaultText = lib.literalMD "the contract's `ports.iam_api`";
      description = "The API port (opened by `openFirewall`; must match the contract).";
    };

    dataDir = service.dataDirOption {
      name = "iam";
      default = defaultDataDir;
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
        Keys of iam-server's TOML configuration (`listen_addr`, `flaredb` and `chainfire` —
        lists of https URLs, `signing_key`, `token_ttl`, `log_format`); the TLS files are
        `tls.*`.

        Precedence, highest first: these settings (PLASMACLOUD_IAM_<KEY> variables in a
        drop-in; lists comma-separated), then /etc/plasmacloud/iam.toml as `firstboot
        configure` writes it from the contract, then iam-server's defaults. Also rendered with
        `pkgs.formats.toml` to /etc/plasmacloud/iam.settings.toml.
      '';
    };

    # HTTPS with the node's certificate; the same files are IAM's client certificate towards
    # FlareDB and Chainfire.
    tls = service.tlsOptions "iam-server";

    openFirewall = service.openFirewallOption "Open the API port in the firewall.";
  };

  config = lib.mkIf cfg.enable (
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
    lib.mkMerge [
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
          (service.notInStore "services.iam.signingKeyFile" cfg.signingKeyFile)
        ];

        environment.etc."plasmacloud/iam.settings.toml" = lib.mkIf (effectiveSettings != { }) {
          source = settingsFormat.generate "iam.settings.toml" effectiveSettings;
        };

        systemd.services.iam = {
          environment = contractLib.settingsToEnv "PLASMACLOUD_IAM" effectiveSettings;
        };
      }
      (service.tlsConfig cfg "iam" "PLASMACLOUD_IAM" firstboot.stateDir)
      (service.account cfg "iam" "PlasmaCloud IAM server")
      # The rendered unit's StateDirectory= is writable without a drop-in.
      (service.movedDataDir cfg "iam" "/var/lib/plasmacloud/iam")
      (service.firewall cfg { tcp = [ cfg.port ]; })
    ]
  );
}
