# services.plasmacloud.firstboot: the first-boot chain and cluster-ready.target.
#
# Installs the unit files `firstboot units` rendered at build time (one source of truth, see
# nixos/pkgs/units.nix) with systemd.packages, enables them by pulling cluster-ready.target
# into multi-user.target (NixOS ignores [Install] sections), gives the oneshots their tools and
# settings in drop-ins, and gates the application services listed in `gatedServices` on
# cluster-ready.target. The order is the design's:
#
#   firstboot-disk → firstboot-enroll → firstboot-configure → chainfire →
#   chainfire-cluster-join → flaredb → flaredb-cluster-join → iam → iam-initial-setup →
#   cluster-health-check → cluster-ready.target
#
# firstboot-enroll gives the node its key and certificate (`<stateDir>/pki/`, on the data
# disk): from pxe-server with this boot's token (netbooted nodes), or it finds the files an
# operator issued offline (`pxe-server pki issue --node NAME --out <stateDir>/pki`).
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.services.plasmacloud.firstboot;
  contractLib = import ./lib/contract.nix;
  contract = contractLib.fromOption cfg.contract;
  inherit (lib) mkOption types literalExpression;

  # The oneshots of the chain (the units that run `firstboot …`).
  oneshots = [
    "firstboot-disk"
    "firstboot-enroll"
    "firstboot-configure"
    "chainfire-cluster-join"
    "flaredb-cluster-join"
    "iam-initial-setup"
    "cluster-health-check"
  ];
  # Every service of the chain: each runs only where the contract is
  # (ConditionPathExists=, rendered with the default path).
  chainServices = oneshots ++ [
    "chainfire"
    "flaredb"
    "iam"
  ];
  defaultContractPath = "/etc/plasmacloud/cluster-config.json";
  # Another contract path: the rendered condition is reset and names it instead.
  contractCondition = lib.optionalAttrs (cfg.contractPath != defaultContractPath) {
    unitConfig.ConditionPathExists = [
      ""
      cfg.contractPath
    ];
  };
in
{
  imports = [
    ./chainfire.nix
    ./flaredb.nix
    ./iam.nix
  ];

  options.services.plasmacloud.firstboot = {
    enable = lib.mkEnableOption "the PlasmaCloud first-boot chain and cluster-ready.target";

    package = mkOption {
      type = types.package;
      description = "The package with the firstboot binary.";
    };

    unitsPackage = mkOption {
      type = types.package;
      default = pkgs.callPackage ./pkgs/units.nix {
        firstboot = cfg.package;
        chainfire = config.services.chainfire.package;
        flaredb = config.services.flaredb.package;
        iam = config.services.iam.package;
      };
      defaultText = lib.literalMD "the units `firstboot units` renders for the configured packages";
      description = ''
        The rendered unit files (lib/systemd/system/*). The default renders them at build time
        from the configured firstboot, chainfire, flaredb and iam packages, so ExecStart=
        always names the binaries this system runs.
      '';
    };

    contract = mkOption {
      type = types.nullOr (contractLib.optionType lib);
      default = null;
      example = literalExpression "./cluster-config.json";
      description = ''
        The cluster contract, installed at `contractPath`. null on netbooted nodes: the
        per-node overlay initrd brings the contract, and netboot-base.nix copies it into the
        running system at stage 1.

        The modules read it while evaluating (port defaults, the data disk's mount point, the
        node-name check), so give it as data: a file in your flake's source
        (`./cluster-config.json`), the contract as an attribute set
        (`lib.importJSON ./cluster-config.json // { … }`), or its JSON text. A store path
        built by a derivation, or a file on the target machine, is installed but never read
        (pure evaluation refuses to read absolute store paths): the built-in defaults apply.
      '';
    };

    contractPath = mkOption {
      type = types.strMatching "/.*";
      default = defaultContractPath;
      description = ''
        Where the oneshots read the contract (PLASMACLOUD_CLUSTER). Every unit of the chain runs
        only where this file exists (`ConditionPathExists=`): a machine without a contract runs
        none of it.
      '';
    };

    nodeName = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "node01";
      description = ''
        This node's name in the contract, written to /etc/plasmacloud/node. null = found at
        boot: `plasmacloud.node=` on the kernel command line, then the overlay's
        /etc/plasmacloud/node, then a local MAC.
      '';
    };

    stateDir = mkOption {
      type = types.str;
      default =
        if contract != null && cfg.nodeName != null then
          contractLib.mountPoint contract cfg.nodeName
        else
          contractLib.defaultMountPoint;
      defaultText = lib.literalMD "the node's `disk.mount_point` in the contract, else `/var/lib/plasmacloud`";
      description = "The data disk's mount point: Raft data, done-markers (PLASMACLOUD_STATE_DIR).";
    };

    deadline = mkOption {
      type = types.strMatching "[0-9]+(ms|s|m)?";
      default = "10m";
      description = "How long each step waits for peers before it exits 75 and is retried.";
    };

    diskTools = mkOption {
      type = types.listOf types.package;
      default = with pkgs; [
        util-linux
        e2fsprogs
        xfsprogs
      ];
      defaultText = literalExpression "with pkgs; [ util-linux e2fsprogs xfsprogs ]";
      description = "What `firstboot disk` runs: sfdisk, wipefs, partx, blkid, mkfs.*, mount.";
    };

    gatedServices = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [
        "plasmavmc"
        "prismnet"
        "flashdns"
      ];
      description = ''
        Application services (names without .service) that start only once the cluster is
        ready: each gets After= and Requires= on cluster-ready.target and is pulled in by it,
        so they start in parallel after the health check.
      '';
    };

    logFormat = mkOption {
      type = types.enum [
        "pretty"
        "json"
      ];
      default = "pretty";
      description = "Log format of the oneshots.";
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion =
          config.services.chainfire.enable
          && config.services.flaredb.enable
          && config.services.iam.enable;
        message = "services.plasmacloud.firstboot: the chain runs Chainfire, FlareDB and IAM; enable services.chainfire, services.flaredb and services.iam.";
      }
      {
        assertion =
          cfg.nodeName == null
          || contract == null
          || lib.elem cfg.nodeName (contractLib.nodeNames contract);
        message =
          let
            names = if contract == null then [ ] else contractLib.nodeNames contract;
          in
          "services.plasmacloud.firstboot.nodeName ${toString cfg.nodeName} is not a node of the contract (${lib.concatStringsSep ", " names}).";
      }
      {
        assertion = cfg.contract == null || lib.hasPrefix "/etc/" cfg.contractPath;
        message = "services.plasmacloud.firstboot.contractPath must lie under /etc/ when `contract` installs a file there (it is ${cfg.contractPath}).";
      }
    ]
    ++ map (p: {
      assertion = false;
      message = "services.plasmacloud.firstboot.contract: ${p}";
    }) (if contract == null then [ ] else contractLib.problems contract);

    environment.systemPackages = [ cfg.package ];

    environment.etc = lib.mkMerge [
      (lib.mkIf (cfg.contract != null) {
        "${lib.removePrefix "/etc/" cfg.contractPath}" = contractLib.etcEntry cfg.contract;
      })
      (lib.mkIf (cfg.nodeName != null) { "plasmacloud/node".text = "${cfg.nodeName}\n"; })
    ];

    systemd.packages = [ cfg.unitsPackage ];

    # Enable the chain: cluster-ready.target pulls everything in through Requires=.
    systemd.targets.cluster-ready = {
      wantedBy = [ "multi-user.target" ];
      wants = map (s: "${s}.service") cfg.gatedServices;
    } // contractCondition;

    systemd.services = lib.mkMerge [
      (lib.genAttrs oneshots (_: {
        environment = {
          PLASMACLOUD_CLUSTER = cfg.contractPath;
          PLASMACLOUD_STATE_DIR = cfg.stateDir;
          PLASMACLOUD_DEADLINE = cfg.deadline;
          PLASMACLOUD_LOG_FORMAT = cfg.logFormat;
        } // lib.optionalAttrs (cfg.nodeName != null) { PLASMACLOUD_NODE = cfg.nodeName; };
        # The rendered units may write /var/lib/plasmacloud; another mount point needs a say.
        serviceConfig.ReadWritePaths = lib.optional (
          cfg.stateDir != contractLib.defaultMountPoint
        ) cfg.stateDir;
      }))
      (lib.genAttrs chainServices (_: contractCondition))
      { firstboot-disk.path = cfg.diskTools; }
      (lib.genAttrs cfg.gatedServices (_: {
        after = [ "cluster-ready.target" ];
        requires = [ "cluster-ready.target" ];
      }))
    ];
  };
}
