# Type checks of the NixOS modules with nixpkgs' lib alone: `lib.evalModules` with a freeform
# root module stands in for NixOS (the options our modules define into — systemd, users,
# networking, environment, boot — are free-form there), so our own option declarations and
# definitions are checked: types (a port of 70000 is refused), assertions, and what the
# config renders. Local only: nixpkgs' lib is fetched, never committed.
# Usage: nix-instantiate --eval --strict --arg lib 'import /tmp/nixpkgs-lib/lib' modules.nix
{ lib }:
let
  root = ../../..;
  contractFile = root + "/examples/cluster-3.json";

  fakeDrv = name: {
    type = "derivation";
    inherit name;
    outPath = "/nix/store/00000000000000000000000000000000-${name}";
    version = "0.0.0";
  };

  # The few parts of pkgs the modules touch.
  pkgs = {
    formats.toml = _: {
      type = lib.types.attrsOf lib.types.anything;
      # A store path that is never written (the check may run where the store is read-only).
      generate = name: value: "/nix/store/00000000000000000000000000000000-${name}";
    };
    callPackage = f: args: fakeDrv "called";
    writeShellScript = name: _: "/nix/store/00000000000000000000000000000000-${name}";
    util-linux = fakeDrv "util-linux";
    e2fsprogs = fakeDrv "e2fsprogs";
    xfsprogs = fakeDrv "xfsprogs";
  };

  # Empty stand-ins for the nixpkgs modules netboot-base.nix imports.
  modulesPath = toString ./stub-modules;

  # The NixOS stand-in: everything not declared here or by our modules is free-form. What is
  # declared has NixOS's type, so list options merge across modules as they do in NixOS.
  listOf = t: lib.mkOption {
    type = lib.types.listOf t;
    default = [ ];
  };
  unitOptions = {
    freeformType = lib.types.lazyAttrsOf lib.types.anything;
    options = {
      after = listOf lib.types.str;
      before = listOf lib.types.str;
      requires = listOf lib.types.str;
      wants = listOf lib.types.str;
      wantedBy = listOf lib.types.str;
      bindsTo = listOf lib.types.str;
      path = listOf lib.types.package;
      environment = lib.mkOption {
        type = lib.types.attrsOf lib.types.str;
        default = { };
      };
    };
  };
  firewallOptions = {
    allowedTCPPorts = listOf lib.types.port;
    allowedUDPPorts = listOf lib.types.port;
  };
  anyAttrs = lib.mkOption {
    type = lib.types.lazyAttrsOf lib.types.anything;
    default = { };
  };
  anyValue = lib.mkOption { type = lib.types.anything; };
  nixosStandIn =
    { ... }:
    {
      freeformType = lib.types.lazyAttrsOf lib.types.anything;
      options = {
        # Undeclared leaves under a declared prefix are errors in the module system, so every
        # NixOS option our modules set below `boot`, `environment`, `networking`, `services`
        # and `systemd` is declared here, loosely.
        boot.initrd.systemd.services = anyAttrs;
        boot.loader = anyAttrs;
        environment.etc = anyAttrs;
        networking.hostName = anyValue;
        networking.useNetworkd = anyValue;
        networking.useDHCP = anyValue;
        networking.interfaces = anyAttrs;
        services.openssh = anyAttrs;
        systemd.network = anyAttrs;
        systemd.tmpfiles = anyAttrs;
        assertions = listOf lib.types.anything;
        warnings = listOf lib.types.str;
        boot.initrd.systemd.enable = lib.mkOption {
          type = lib.types.bool;
          default = false;
        };
        boot.kernelParams = listOf lib.types.str;
        boot.initrd.postMountCommands = lib.mkOption {
          type = lib.types.lines;
          default = "";
        };
        environment.systemPackages = listOf lib.types.package;
        systemd.packages = listOf lib.types.package;
        systemd.services = lib.mkOption {
          type = lib.types.attrsOf (lib.types.submodule unitOptions);
          default = { };
        };
        systemd.targets = lib.mkOption {
          type = lib.types.attrsOf (lib.types.submodule unitOptions);
          default = { };
        };
        networking.firewall = firewallOptions // {
          interfaces = lib.mkOption {
            type = lib.types.attrsOf (lib.types.submodule { options = firewallOptions; });
            default = { };
          };
        };
      };
    };

  packages = {
    services.plasmacloud.firstboot.package = fakeDrv "firstboot";
    services.chainfire.package = fakeDrv "chainfire";
    services.flaredb.package = fakeDrv "flaredb";
    services.iam.package = fakeDrv "iam";
    services.pxe-server.package = fakeDrv "pxe-server";
  };

  eval =
    modules:
    (lib.evalModules {
      modules = [
        nixosStandIn
        (root + "/nixos/default.nix")
        packages
      ] ++ modules;
      specialArgs = { inherit pkgs modulesPath; };
    }).config;

  failedAssertions = cfg: map (a: a.message) (lib.filter (a: !a.assertion) cfg.assertions);
  throws = e: !(builtins.tryEval (builtins.deepSeq e e)).success;

  node = extra: eval [
    {
      services.plasmacloud.firstboot = {
        enable = true;
        contract = contractFile;
        nodeName = "node01";
      };
      services.chainfire.enable = true;
      services.flaredb.enable = true;
      services.iam.enable = true;
    }
    extra
  ];

  n1 = node {
    services.chainfire.openFirewall = true;
    services.flaredb.openFirewall = true;
    services.iam.openFirewall = true;
    services.chainfire.settings.heartbeat_ms = 150;
    services.iam.tokenTtl = "2h";
    services.plasmacloud.firstboot.gatedServices = [ "plasmavmc" ];
  };

  # The provisioning server of nixosConfigurations.pxe-host (full mode, a DHCP range, the
  # firewall open on eth1), plus `extra`.
  pxe = extra: eval [
    (root + "/nixos/pxe-host/configuration.nix")
    extra
  ];
  p1 = pxe { };

  netboot = eval [
    (root + "/nixos/netboot-base.nix")
    { plasmacloud.netboot.sshAuthorizedKeys = [ "ssh-ed25519 AAAA test" ]; }
  ];

  nodeConfig =
    name:
    eval [
      (root + "/nixos/nodes/${name}/configuration.nix")
    ];
in
[
  {
    name = "a full node passes every assertion";
    expected = [ ];
    actual = failedAssertions n1;
  }
  {
    name = "node firewall opens the contract's ports";
    expected = [
      2379
      2380
      2381
      2479
      2480
      8080
    ];
    actual = lib.sort lib.lessThan n1.networking.firewall.allowedTCPPorts;
  }
  {
    name = "cluster-ready.target is pulled into multi-user.target and pulls the gated services";
    expected = {
      wantedBy = [ "multi-user.target" ];
      wants = [ "plasmavmc.service" ];
    };
    actual = {
      inherit (n1.systemd.targets.cluster-ready) wantedBy wants;
    };
  }
  {
    name = "gated services are ordered after and require cluster-ready.target";
    expected = {
      after = [ "cluster-ready.target" ];
      requires = [ "cluster-ready.target" ];
    };
    actual = {
      inherit (n1.systemd.services.plasmavmc) after requires;
    };
  }
  {
    name = "the units come from the rendered package, never a hand-written ExecStart";
    expected = {
      packages = 1;
      execStarts = [ ];
    };
    actual = {
      packages = lib.length n1.systemd.packages;
      execStarts = lib.filter (n: n1.systemd.services.${n}.serviceConfig ? ExecStart) [
        "chainfire"
        "flaredb"
        "iam"
        "firstboot-disk"
        "firstboot-enroll"
        "firstboot-configure"
        "cluster-health-check"
      ];
    };
  }
  {
    name = "oneshots get the contract, node and state dir";
    expected = {
      PLASMACLOUD_CLUSTER = "/etc/plasmacloud/cluster-config.json";
      PLASMACLOUD_NODE = "node01";
      PLASMACLOUD_STATE_DIR = "/var/lib/plasmacloud";
      PLASMACLOUD_DEADLINE = "10m";
      PLASMACLOUD_LOG_FORMAT = "pretty";
    };
    actual = n1.systemd.services.chainfire-cluster-join.environment;
  }
  {
    name = "firstboot-enroll (the node's key and certificate) is a oneshot of the chain like the others";
    expected = n1.systemd.services.chainfire-cluster-join.environment;
    actual = n1.systemd.services.firstboot-enroll.environment;
  }
  {
    name = "the chain's units keep the rendered ConditionPathExists= for the default contract path";
    expected = [ ];
    actual = lib.filter (n: n1.systemd.services.${n} ? unitConfig) [
      "firstboot-disk"
      "firstboot-enroll"
      "chainfire"
      "cluster-health-check"
    ];
  }
  {
    name = "another contract path: every unit of the chain and cluster-ready.target run only where it is";
    expected = {
      units = lib.genList (_: [
        ""
        "/etc/plasmacloud/other.json"
      ]) 11;
      env = "/etc/plasmacloud/other.json";
    };
    actual =
      let
        c = node { services.plasmacloud.firstboot.contractPath = "/etc/plasmacloud/other.json"; };
      in
      {
        units =
          map (n: c.systemd.services.${n}.unitConfig.ConditionPathExists) [
            "firstboot-disk"
            "firstboot-enroll"
            "firstboot-configure"
            "chainfire"
            "chainfire-cluster-join"
            "flaredb"
            "flaredb-cluster-join"
            "iam"
            "iam-initial-setup"
            "cluster-health-check"
          ]
          ++ [ c.systemd.targets.cluster-ready.unitConfig.ConditionPathExists ];
        env = c.systemd.services.firstboot-enroll.environment.PLASMACLOUD_CLUSTER;
      };
  }
  {
    name = "firstboot-disk has its tools";
    expected = 3;
    actual = lib.length n1.systemd.services.firstboot-disk.path;
  }
  {
    name = "contract and identity are installed in /etc";
    expected = [
      "plasmacloud/cluster-config.json"
      "plasmacloud/node"
    ];
    actual = lib.filter (
      n:
      lib.elem n [
        "plasmacloud/cluster-config.json"
        "plasmacloud/node"
      ]
    ) (lib.attrNames n1.environment.etc);
  }
  {
    name = "settings become variables that win over the firstboot TOML";
    expected = {
      chainfire = {
        PLASMACLOUD_CHAINFIRE_HEARTBEAT_MS = "150";
      };
      iam = {
        PLASMACLOUD_IAM_TOKEN_TTL = "2h";
      };
    };
    actual =
      let
        notTls = lib.filterAttrs (n: _: !lib.hasInfix "_TLS_" n);
      in
      {
        chainfire = notTls n1.systemd.services.chainfire.environment;
        iam = notTls n1.systemd.services.iam.environment;
      };
  }
  {
    name = "under their users the servers get the node's TLS files from enrollment as credentials";
    expected =
      lib.genList
        (_: {
          cred = [
            "tls-ca:/var/lib/plasmacloud/pki/ca.crt"
            "tls-cert:/var/lib/plasmacloud/pki/node.crt"
            "tls-key:/var/lib/plasmacloud/pki/node.key"
          ];
          env = [
            "%d/tls-ca"
            "%d/tls-cert"
            "%d/tls-key"
          ];
        })
        3;
    actual =
      map
        (
          s:
          let
            u = n1.systemd.services.${s};
          in
          {
            cred = u.serviceConfig.LoadCredential;
            env = lib.attrValues (lib.filterAttrs (n: _: lib.hasInfix "_TLS_" n) u.environment);
          }
        )
        [
          "chainfire"
          "flaredb"
          "iam"
        ];
  }
  {
    name = "as root the servers read the files firstboot configure names (nothing in the drop-in)";
    expected = {
      cred = [ ];
      env = { };
    };
    actual =
      let
        u = (node { services.flaredb.user = "root"; }).systemd.services.flaredb;
      in
      {
        cred = u.serviceConfig.LoadCredential;
        env = lib.filterAttrs (n: _: lib.hasInfix "_TLS_" n) u.environment;
      };
  }
  {
    name = "the node's TLS files follow a moved state directory";
    expected = "tls-key:/srv/plasmacloud/pki/node.key";
    actual = lib.last (node { services.plasmacloud.firstboot.stateDir = "/srv/plasmacloud"; })
      .systemd.services.iam.serviceConfig.LoadCredential;
  }
  {
    name = "services run as their own users";
    expected = [
      "chainfire"
      "flaredb"
      "iam"
    ];
    actual = map (s: n1.systemd.services.${s}.serviceConfig.User) [
      "chainfire"
      "flaredb"
      "iam"
    ];
  }
  {
    name = "a port of 70000 is refused by the type";
    expected = true;
    actual = throws (node { services.chainfire.apiPort = 70000; }).services.chainfire.apiPort;
  }
  {
    name = "a port that differs from the contract fails an assertion";
    expected = 1;
    actual = lib.length (failedAssertions (node { services.flaredb.raftPort = 2999; }));
  }
  {
    name = "a node name outside the contract fails an assertion";
    expected = 1;
    actual = lib.length (
      failedAssertions (node { services.plasmacloud.firstboot.nodeName = lib.mkForce "node09"; })
    );
  }
  {
    name = "the chain without its services fails an assertion";
    expected = 1;
    actual = lib.length (failedAssertions (node { services.iam.enable = lib.mkForce false; }));
  }
  {
    name = "a bad deadline is refused by the type";
    expected = true;
    actual = throws (node { services.plasmacloud.firstboot.deadline = "ten minutes"; })
      .services.plasmacloud.firstboot.deadline;
  }
  {
    name = "TLS files set in the module become credentials (the CA stays the node's)";
    expected = {
      cred = [
        "tls-ca:/var/lib/plasmacloud/pki/ca.crt"
        "tls-cert:/etc/plasmacloud/tls/node01.crt"
        "tls-key:/etc/plasmacloud/tls/node01.key"
      ];
      env = "%d/tls-key";
    };
    actual =
      let
        c = node {
          services.chainfire.tls = {
            certFile = "/etc/plasmacloud/tls/node01.crt";
            keyFile = "/etc/plasmacloud/tls/node01.key";
          };
        };
      in
      {
        cred = c.systemd.services.chainfire.serviceConfig.LoadCredential;
        env = c.systemd.services.chainfire.environment.PLASMACLOUD_CHAINFIRE_TLS_KEY;
      };
  }
  {
    name = "pxe-host (nixos/pxe-host): pxe-server passes its assertions";
    expected = [ ];
    actual = failedAssertions p1;
  }
  {
    name = "pxe-server firewall: UDP 67/69/4011 and the contract's TCP ports (enrollment too), on the boot interface";
    expected = {
      udp = [
        67
        69
        4011
      ];
      tcp = [
        8081
        8082
        8443
      ];
    };
    actual = {
      udp = p1.networking.firewall.interfaces.eth1.allowedUDPPorts;
      tcp = p1.networking.firewall.interfaces.eth1.allowedTCPPorts;
    };
  }
  {
    name = "pxe-server serves from a generated config";
    expected = true;
    actual = lib.hasInfix " serve --config /nix/store/" p1.systemd.services.pxe-server.serviceConfig.ExecStart;
  }
  {
    name = "pxe-server: proxy mode with a DHCP range fails an assertion";
    expected = 1;
    actual = lib.length (failedAssertions (pxe { services.pxe-server.mode = lib.mkForce "proxy"; }));
  }
  {
    name = "pxe-server: an unknown mode is refused by the type";
    expected = true;
    actual = throws (pxe { services.pxe-server.mode = lib.mkForce "relay"; }).services.pxe-server.mode;
  }
  {
    name = "pxe-server: management and enrollment address ports reach the firewall";
    expected = [
      8081
      9082
      9443
    ];
    actual =
      (pxe {
        services.pxe-server.managementAddr = "10.99.0.1:9082";
        services.pxe-server.enrollmentAddr = "10.99.0.1:9443";
      }).networking.firewall.interfaces.eth1.allowedTCPPorts;
  }
  {
    name = "pxe-server: an enrollment token lifetime under 60 s is refused by the type";
    expected = [
      true
      false
    ];
    actual = [
      (throws (pxe { services.pxe-server.enrollTokenTtl = 30; }).services.pxe-server.enrollTokenTtl)
      (throws (pxe { services.pxe-server.enrollTokenTtl = 1800; }).services.pxe-server.enrollTokenTtl)
    ];
  }
  {
    name = "pxe-server: the state directory is the unit's, 0700; elsewhere tmpfiles makes it 0700";
    expected = {
      unit = "pxe-server";
      mode = "0700";
      elsewhere = {
        mode = "0700";
        user = "pxe-server";
        group = "pxe-server";
      };
    };
    actual = {
      unit = p1.systemd.services.pxe-server.serviceConfig.StateDirectory;
      mode = p1.systemd.services.pxe-server.serviceConfig.StateDirectoryMode;
      elsewhere =
        (pxe { services.pxe-server.stateDir = lib.mkForce "/srv/pxe-state"; })
        .systemd.tmpfiles.settings."10-pxe-server"."/srv/pxe-state".d;
    };
  }
  {
    name = "pxe-server: a CA to import comes in as credentials before the check";
    expected = {
      pre = 2;
      cred = [
        "ca-cert:/run/keys/ca.crt"
        "ca-key:/run/keys/ca.key"
      ];
      failed = [ ];
    };
    actual =
      let
        c = pxe {
          services.pxe-server.ca = {
            certFile = "/run/keys/ca.crt";
            keyFile = "/run/keys/ca.key";
          };
        };
      in
      {
        pre = lib.length c.systemd.services.pxe-server.serviceConfig.ExecStartPre;
        cred = c.systemd.services.pxe-server.serviceConfig.LoadCredential;
        failed = failedAssertions c;
      };
  }
  {
    name = "pxe-server: a CA certificate without its key fails an assertion";
    expected = 1;
    actual = lib.length (failedAssertions (pxe { services.pxe-server.ca.certFile = "/run/keys/ca.crt"; }));
  }
  {
    name = "netboot: stage 1 carries /etc/plasmacloud into the target root";
    expected = true;
    actual = lib.hasInfix ''cp -a /etc/plasmacloud "$targetRoot/etc/"'' netboot.boot.initrd.postMountCommands;
  }
  {
    name = "netboot: stage 1 carries the enrollment token, root's alone (0700, the token 0600)";
    expected = [
      true
      true
      true
    ];
    actual = map (x: lib.hasInfix x netboot.boot.initrd.postMountCommands) [
      ''cp -a /etc/plasmacloud/enroll "$targetRoot/etc/plasmacloud/"''
      ''chmod 0700 "$targetRoot/etc/plasmacloud/enroll"''
      ''chmod 0600 "$targetRoot/etc/plasmacloud/enroll/token"''
    ];
  }
  {
    name = "netboot, systemd initrd: the enrollment copy runs after the overlay copies and fixes the modes";
    expected = {
      after = [
        "initrd-fs.target"
        "plasmacloud-overlay-0.service"
      ];
      post = [
        "/bin/chown -R 0:0 /sysroot/etc/plasmacloud/enroll"
        "/bin/chmod 0700 /sysroot/etc/plasmacloud/enroll"
        "-/bin/chmod 0600 /sysroot/etc/plasmacloud/enroll/token"
        "-/bin/chmod 0644 /sysroot/etc/plasmacloud/enroll/ca.crt"
      ];
    };
    actual =
      let
        u =
          (eval [
            (root + "/nixos/netboot-base.nix")
            { boot.initrd.systemd.enable = true; }
          ]).boot.initrd.systemd.services.plasmacloud-enroll;
      in
      {
        inherit (u) after;
        post = u.serviceConfig.ExecStartPost;
      };
  }
  {
    name = "netboot: serial console, keys only, chain enabled";
    expected = {
      console = true;
      password = false;
      keys = [ "ssh-ed25519 AAAA test" ];
      chain = true;
      failed = [ ];
    };
    actual = {
      console = lib.elem "console=ttyS0,115200n8" netboot.boot.kernelParams;
      password = netboot.services.openssh.settings.PasswordAuthentication;
      keys = netboot.users.users.root.openssh.authorizedKeys.keys;
      chain = netboot.services.plasmacloud.firstboot.enable;
      failed = failedAssertions netboot;
    };
  }
  {
    name = "example nodes: address, hostname and data disk mount from the contract";
    expected = [
      {
        host = "node01";
        addr = "10.99.0.11";
        mount = "/dev/disk/by-label/plasmacloud";
        failed = [ ];
      }
      {
        host = "node02";
        addr = "10.99.0.12";
        mount = "/dev/disk/by-label/plasmacloud";
        failed = [ ];
      }
      {
        host = "node03";
        addr = "10.99.0.13";
        mount = "/dev/disk/by-label/plasmacloud";
        failed = [ ];
      }
    ];
    actual = map (
      n:
      let
        c = nodeConfig n;
      in
      {
        host = c.networking.hostName;
        addr = (lib.head c.networking.interfaces.cluster0.ipv4.addresses).address;
        mount = c.fileSystems."/var/lib/plasmacloud".device;
        failed = failedAssertions c;
      }
    ) [
      "node01"
      "node02"
      "node03"
    ];
  }
  {
    name = "secrets given as store paths are refused: pxe-server's state (option and setting) and CA key, IAM's signing key, a TLS key";
    expected = [
      true
      true
      true
      true
      true
    ];
    actual =
      let
        refused =
          cfg: option: lib.any (m: lib.hasPrefix "${option} is a secret" m) (failedAssertions cfg);
      in
      [
        (refused (pxe {
          services.pxe-server.stateDir = lib.mkForce "/nix/store/00000000000000000000000000000000-state";
        }) "services.pxe-server.stateDir")
        (refused (pxe {
          services.pxe-server.settings.state-dir = "/nix/store/00000000000000000000000000000000-state";
        }) "services.pxe-server.settings.state-dir")
        (refused (pxe {
          services.pxe-server.ca = {
            certFile = "/run/keys/ca.crt";
            keyFile = "/nix/store/00000000000000000000000000000000-ca.key";
          };
        }) "services.pxe-server.ca.keyFile")
        (refused (node {
          services.iam.signingKeyFile = "/nix/store/00000000000000000000000000000000-key.pem";
        }) "services.iam.signingKeyFile")
        (refused (node {
          services.flaredb.tls = {
            certFile = "/etc/plasmacloud/tls/node01.crt";
            keyFile = "/nix/store/00000000000000000000000000000000-node01.key";
          };
        }) "services.flaredb.tls.keyFile")
      ];
  }
  {
    name = "the same secrets on the machine pass";
    expected = [ ];
    actual = failedAssertions (node {
      services.iam.signingKeyFile = "/var/lib/plasmacloud/iam/signing-key.pem";
      services.flaredb.tls = {
        certFile = "/etc/plasmacloud/tls/node01.crt";
        keyFile = "/etc/plasmacloud/tls/node01.key";
      };
    });
  }
  {
    name = "a contract whose admin carries a password instead of its hash fails an assertion naming it";
    expected = [
      true
      true
    ];
    actual =
      let
        plain = (lib.importJSON contractFile) // {
          iam.admin = {
            username = "admin";
            password_hash = "Example-Admin-Passphrase-2026";
          };
        };
        named = cfg: lib.any (lib.hasInfix "iam.admin.password_hash is not an argon2id") (failedAssertions cfg);
      in
      [
        (named (node { services.plasmacloud.firstboot.contract = lib.mkForce plain; }))
        (named (pxe { services.pxe-server.cluster = lib.mkForce plain; }))
      ];
  }
  {
    name = "a version-1 contract is refused at evaluation (firstboot validate's advice)";
    expected = true;
    actual = throws (
      node {
        services.plasmacloud.firstboot.contract = lib.mkForce ((lib.importJSON contractFile) // { version = 1; });
      }
    ).services.chainfire.apiPort;
  }
  {
    name = "a contract given as an attribute set is read and installed as text";
    expected = {
      port = 2479;
      text = true;
    };
    actual =
      let
        c = node {
          services.plasmacloud.firstboot.contract = lib.mkForce (lib.importJSON contractFile);
        };
      in
      {
        port = c.services.flaredb.apiPort;
        text = c.environment.etc."plasmacloud/cluster-config.json" ? text;
      };
  }
  {
    name = "a contract built by a derivation is not read at evaluation (no IFD): defaults apply";
    expected = {
      port = 2379;
      failed = [ ];
    };
    actual =
      let
        c = node { services.plasmacloud.firstboot.contract = lib.mkForce (fakeDrv "cluster-config.json"); };
      in
      {
        port = c.services.chainfire.apiPort;
        failed = failedAssertions c;
      };
  }
]
