# What every PlasmaCloud service module declares the same way, written once: the `enable`,
# `package`, `user`, `group` and `openFirewall` options, the dedicated system user and group,
# the firewall rule, a data directory moved off the unit's own StateDirectory=, the node's TLS
# files handed to a server, and the rule that a secret never lies in the Nix store.
#
# The store is world-readable and every store path is a public artifact (shared/DESIGN.md,
# "Trust"): a private key, a password or a state directory holding either must be a path on
# the machine, outside the store. `notInStore` is the assertion each module puts on such
# options.
{ lib }:
let
  inherit (lib) mkOption mkIf types;
  contractLib = import ./contract.nix;
in
rec {
  # `enable`, `package`, `user` and `group` of a service whose dedicated user and group are
  # both called `name`; `binary` is the program the package holds, `what` the service.
  coreOptions = name: binary: what: {
    enable = lib.mkEnableOption what;

    package = mkOption {
      type = types.package;
      description = "The package with the ${binary} binary. The flake's `nixosModules` default it to this flake's package for the host platform.";
    };

    user = mkOption {
      type = types.str;
      default = name;
      description = "User ${binary} runs as: by default a dedicated system user; `root` keeps the unit as it is rendered.";
    };

    group = mkOption {
      type = types.str;
      default = name;
      description = "Group ${binary} runs as.";
    };
  };

  # `dataDir`: the service's state, by default `<firstboot.stateDir>/<name>` on the data disk.
  dataDirOption =
    {
      name,
      default,
      description,
    }:
    mkOption {
      type = types.str;
      inherit default description;
      defaultText = lib.literalExpression ''"''${config.services.plasmacloud.firstboot.stateDir}/${name}"'';
    };

  # `openFirewall`, off by default; `description` says what it opens.
  openFirewallOption =
    description:
    mkOption {
      type = types.bool;
      default = false;
      inherit description;
    };

  # The unit `name` runs as `cfg.user` and `cfg.group`; the dedicated user and group exist
  # when those are the defaults `coreOptions` gives.
  account = cfg: name: description: {
    users.users = mkIf (cfg.user == name) {
      ${name} = {
        isSystemUser = true;
        inherit (cfg) group;
        inherit description;
      };
    };
    users.groups = mkIf (cfg.group == name) { ${name} = { }; };
    systemd.services.${name}.serviceConfig = {
      User = cfg.user;
      Group = cfg.group;
    };
  };

  # The firewall rule of `openFirewall`: TCP and UDP ports on every interface, or (for
  # `firewallOnInterface`) on `cfg.interface` only. The attribute names below depend on
  # nothing in `cfg`: the module system reads names before it evaluates conditions.
  firewall = cfg: ports: {
    networking.firewall = lib.mapAttrs (_: mkIf cfg.openFirewall) (firewallRule ports);
  };
  firewallOnInterface = cfg: ports: {
    networking.firewall.interfaces = mkIf cfg.openFirewall { ${cfg.interface} = firewallRule ports; };
  };
  firewallRule =
    {
      tcp ? [ ],
      udp ? [ ],
    }:
    {
      allowedTCPPorts = tcp;
      allowedUDPPorts = udp;
    };

  # A data directory the unit's own StateDirectory= (`unitStateDir`) does not cover: made
  # writable in the unit (ReadWritePaths=) and created, owned by the service, at boot.
  movedDataDir =
    cfg: name: unitStateDir:
    let
      moved = cfg.dataDir != unitStateDir;
    in
    {
      systemd.services.${name}.serviceConfig.ReadWritePaths = lib.optional moved cfg.dataDir;
      systemd.tmpfiles.settings."10-${name}" = mkIf moved {
        ${cfg.dataDir}.d = {
          inherit (cfg) user group;
          mode = "0700";
        };
      };
    };

  # `tls.{certFile,keyFile,caFile}` of a server; null = the node's own files from enrollment
  # (`<firstboot.stateDir>/pki/{node.crt,node.key,ca.crt}`, which `firstboot configure` names
  # in the server's TOML).
  tlsOptions =
    binary:
    let
      file =
        what: onNode: extra:
        mkOption {
          type = types.nullOr types.str;
          default = null;
          example = "/var/lib/plasmacloud/pki/${onNode}";
          description = ''
            Path on the node of ${what} (PEM) for ${binary}; null = the node's
            `<stateDir>/pki/${onNode}`, made at enrollment (`firstboot-enroll.service`) or issued
            offline (`pxe-server pki issue --node`).${extra}
          '';
        };
    in
    {
      certFile = file "this node's certificate from the cluster CA" "node.crt" "";
      keyFile = file "this node's private key" "node.key" " A secret: never a store path (an assertion refuses one). Under a dedicated `user` the three files reach the server as systemd credentials (LoadCredential=), so the root-only pki/ directory works.";
      caFile = file "the cluster CA certificate, which every peer and client is verified against" "ca.crt" "";
    };

  # The server's TLS files in a drop-in. Under a dedicated user the three files are handed
  # over with LoadCredential= (the node's pki/ directory is 0700 root and the key 0600: the
  # server reads root's copies, systemd makes private ones for it) and the
  # `<envPrefix>_TLS_*` variables point at `%d/tls-{cert,key,ca}`; as root the unit reads the
  # files `firstboot configure` names, and only paths set in the module become variables.
  tlsConfig =
    cfg: name: envPrefix: stateDir:
    let
      node = contractLib.nodeTlsFiles stateDir;
      files = {
        cert = if cfg.tls.certFile == null then node.cert else cfg.tls.certFile;
        key = if cfg.tls.keyFile == null then node.key else cfg.tls.keyFile;
        ca = if cfg.tls.caFile == null then node.ca else cfg.tls.caFile;
      };
      given = {
        cert = cfg.tls.certFile;
        key = cfg.tls.keyFile;
        ca = cfg.tls.caFile;
      };
      asCredential = cfg.user != "root";
      var = what: "${envPrefix}_TLS_${lib.toUpper what}";
    in
    {
      assertions = [
        {
          assertion = (cfg.tls.certFile == null) == (cfg.tls.keyFile == null);
          message = "services.${name}.tls: certFile and keyFile go together (a certificate is only good with its own key).";
        }
        (notInStore "services.${name}.tls.keyFile" cfg.tls.keyFile)
      ];
      systemd.services.${name} = {
        environment =
          if asCredential then
            lib.mapAttrs' (what: _: lib.nameValuePair (var what) "%d/tls-${what}") files
          else
            lib.mapAttrs' (what: path: lib.nameValuePair (var what) path) (
              lib.filterAttrs (_: v: v != null) given
            );
        serviceConfig.LoadCredential = lib.optionals asCredential (
          lib.mapAttrsToList (what: path: "tls-${what}:${path}") files
        );
      };
    };

  # Is this value a path inside the Nix store (a Nix path value is copied there when used)?
  inStore =
    v: builtins.isPath v || lib.hasPrefix "${builtins.storeDir}/" (toString v) || lib.isDerivation v;

  # The assertion that refuses a secret (a key, a password, a directory that holds them)
  # given as a store path. `value` may be null (nothing given).
  notInStore = option: value: {
    assertion = value == null || !inStore value;
    message = "${option} is a secret (or holds secrets) but names the Nix store (${toString value}), which every user of the machine can read: give a path on the machine instead, e.g. under /var/lib or /run/keys, and copy the secret there out of band.";
  };
}
