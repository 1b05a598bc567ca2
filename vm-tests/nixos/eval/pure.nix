# Pure tests of nixos/lib/contract.nix and the nodes' disko layouts: builtins only, no
# nixpkgs. Run by vm-tests/nix-eval-tests.sh; each test is { name, expected, actual }.
let
  c = import ../../../nixos/lib/contract.nix;
  root = ../../..;
  three = c.load (root + "/examples/cluster-3.json");
  five = c.load (root + "/examples/cluster-5.json");
  disko = n: (import (root + "/nixos/nodes/${n}/disko.nix")).disko.devices;
  throws = e: !(builtins.tryEval (builtins.deepSeq e e)).success;
  testAdmin = builtins.fromJSON (builtins.readFile (root + "/vm-tests/nixos/lib/test-admin.json"));
  # A version-1 contract as the old examples were: TLS paths and an IAM credential file.
  old =
    builtins.removeAttrs three [ "iam" ]
    // {
      version = 1;
      tls.ca_cert = "/etc/plasmacloud/tls/ca.crt";
      nodes = map (n: n // { tls = { cert = "c"; key = "k"; }; }) three.nodes;
      iam.bootstrap_credential = "/etc/plasmacloud/iam-admin.json";
    };
  migrateRs = builtins.readFile (root + "/firstboot/contract/src/migrate.rs");
  wireRs = builtins.readFile (root + "/firstboot/contract/src/wire.rs");
  # How the crate writes a message as a Rust string literal.
  rustLiteral = builtins.replaceStrings [ "\"" ] [ "\\\"" ];
  infix = needle: hay: builtins.replaceStrings [ needle ] [ "" ] hay != hay;
in
[
  {
    name = "node names of cluster-3";
    expected = [
      "node01"
      "node02"
      "node03"
    ];
    actual = c.nodeNames three;
  }
  {
    name = "the seed is the first initial voter";
    expected = "node01";
    actual = c.seed three;
  }
  {
    name = "isSeed/isVoter";
    expected = [
      true
      false
      true
    ];
    actual = [
      (c.isSeed three "node01")
      (c.isSeed three "node02")
      (c.isVoter three "node03")
    ];
  }
  {
    name = "cluster-5 votes with an odd set";
    expected = 1;
    actual = builtins.length (c.voters five) - (builtins.length (c.voters five) / 2) * 2;
  }
  {
    name = "voter API URLs of FlareDB (every service port speaks TLS)";
    expected = [
      "https://10.99.0.11:2479"
      "https://10.99.0.12:2479"
      "https://10.99.0.13:2479"
    ];
    actual = c.voterUrls three "flaredb";
  }
  {
    name = "node by MAC";
    expected = "node02";
    actual = (c.nodeByMac three "52:54:00:00:00:02").name;
  }
  {
    name = "an unknown node is an error naming it";
    expected = true;
    actual = throws (c.node three "node09");
  }
  {
    name = "node TCP ports (firewall)";
    expected = [
      2379
      2380
      2381
      2479
      2480
      8080
    ];
    actual = c.nodeTcpPorts three;
  }
  {
    name = "ports default when the contract omits them";
    expected = 2379;
    actual = (c.ports (removeAttrs three [ "ports" ])).chainfire_api;
  }
  {
    name = "boot server ports (UDP 67/69/4011, TCP http/management/enrollment)";
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
    actual = c.bootServerPorts three;
  }
  {
    name = "the enrollment port defaults to 8443; enrollment and management are https";
    expected = [
      "https://10.99.0.1:8443"
      "https://10.99.0.1:8082"
      8443
    ];
    actual = [
      (c.enrollmentUrl three)
      (c.managementUrl three)
      (c.bootServer (three // { boot_server = builtins.removeAttrs three.boot_server [ "enrollment_port" ]; }))
      .enrollment_port
    ];
  }
  {
    name = "a node's key material lives under its state directory's pki/";
    expected = {
      cert = "/data/pki/node.crt";
      key = "/data/pki/node.key";
      ca = "/data/pki/ca.crt";
    };
    actual = c.nodeTlsFiles "/data";
  }
  {
    name = "the enrollment initrd's files (firstboot/contract: ENROLL_DIR, ENROLL_*_FILE)";
    expected = [
      "/etc/plasmacloud/enroll"
      "token"
      "ca.crt"
      "pki"
    ];
    actual = [
      c.enrollDir
      c.enrollTokenFile
      c.enrollCaFile
      c.nodePkiDir
    ];
  }
  {
    name = "contract version 2 is read; the crate's CONTRACT_VERSION is the same";
    expected = [
      2
      true
    ];
    actual = [
      three.version
      (infix "pub const CONTRACT_VERSION: u32 = ${toString c.contractVersion};" wireRs)
    ];
  }
  {
    name = "a version-1 contract is refused at evaluation, however it is given";
    expected = [
      true
      true
      true
      true
    ];
    actual = [
      (throws (c.fromOption old))
      (throws (c.fromOption (builtins.toJSON old)))
      (throws (c.checkVersion old))
      (throws (c.checkVersion (three // { version = 3; })))
    ];
  }
  {
    name = "a version-1 contract is told what to change, path by path";
    expected = [
      "version"
      "tls"
      "nodes[0].tls"
      "nodes[1].tls"
      "nodes[2].tls"
      "iam.bootstrap_credential"
    ];
    actual = map (p: builtins.head (builtins.match "([^:]*): .*" p)) (c.oldVersionProblems old);
  }
  {
    name = "the advice is firstboot validate's own (firstboot/contract/src/migrate.rs)";
    expected = [
      true
      true
      true
      true
    ];
    actual = map (m: infix (rustLiteral m) migrateRs) (
      builtins.attrValues (c.migrationAdvice "{CONTRACT_VERSION}")
    );
  }
  {
    name = "the admin is an argon2id hash (the examples' and the tests'); a password is a problem";
    expected = [
      [ ]
      [ ]
      [ "iam.admin.password_hash" ]
      true
    ];
    actual = [
      (c.problems three)
      (c.problems five)
      (map (p: builtins.head (builtins.match "([^ ]*) .*" p)) (
        c.problems (three // { iam.admin = { username = "admin"; password_hash = testAdmin.password; }; })
      ))
      (c.isArgon2idHash testAdmin.password_hash)
    ];
  }
  {
    name = "a pinned CA is a fingerprint";
    expected = [
      null
      [ ]
      [ "pki.ca_sha256" ]
    ];
    actual = [
      (c.caSha256 three)
      (c.problems (three // { pki.ca_sha256 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"; }))
      (map (p: builtins.head (builtins.match "([^ ]*) .*" p)) (
        c.problems (three // { pki.ca_sha256 = "01:23"; })
      ))
    ];
  }
  {
    name = "node network";
    expected = {
      hostName = "node03";
      macAddress = "52:54:00:00:00:03";
      address = "10.99.0.13";
      prefixLength = 24;
    };
    actual = c.nodeNetwork three "node03";
  }
  {
    name = "disko layout of node01 matches the contract";
    expected = {
      device = "/dev/vdb";
      format = "ext4";
      mountpoint = "/var/lib/plasmacloud";
      label = "plasmacloud";
      fsLabel = [
        "-L"
        "plasmacloud"
      ];
    };
    actual =
      let
        d = (disko "node01").disk.data;
        p = d.content.partitions.plasmacloud;
      in
      {
        inherit (d) device;
        inherit (p.content) format mountpoint;
        inherit (p) label;
        fsLabel = p.content.extraArgs;
      };
  }
  {
    name = "three nodes, three disko layouts on /dev/vdb";
    expected = [
      "/dev/vdb"
      "/dev/vdb"
      "/dev/vdb"
    ];
    actual = map (n: (disko n).disk.data.device) [
      "node01"
      "node02"
      "node03"
    ];
  }
  {
    name = "test overrides: data disk and the test's IAM admin (its hash, never its password)";
    expected = {
      devices = [
        "/dev/vda"
        "/dev/vda"
        "/dev/vda"
      ];
      admin = {
        username = "admin";
        password_hash = testAdmin.password_hash;
      };
      untouched = "demo-3";
      problems = [ ];
    };
    actual =
      let
        t = c.withTestOverrides three {
          device = "/dev/vda";
          admin = testAdmin;
        };
      in
      {
        devices = map (n: (c.disk t n).device) (c.nodeNames t);
        admin = c.iamAdmin t;
        untouched = t.cluster.name;
        problems = c.problems t;
      };
  }
  {
    name = "settings to environment variables";
    expected = {
      PLASMACLOUD_IAM_FLAREDB = "http://a:2479,http://b:2479";
      PLASMACLOUD_IAM_TOKEN_TTL = "1h";
      PLASMACLOUD_CHAINFIRE_HEARTBEAT_MS = "150";
      PLASMACLOUD_CHAINFIRE_X = "true";
    };
    actual =
      c.settingsToEnv "PLASMACLOUD_IAM" {
        flaredb = [
          "http://a:2479"
          "http://b:2479"
        ];
        token_ttl = "1h";
        signing_key = null;
      }
      // c.settingsToEnv "PLASMACLOUD_CHAINFIRE" {
        heartbeat_ms = 150;
        x = true;
      };
  }
  {
    name = "nested settings have no environment form";
    expected = true;
    actual = throws (c.settingsToEnv "P" { a.b = 1; });
  }
  {
    name = "port of an address";
    expected = [
      8081
      9000
    ];
    actual = [
      (c.portOfAddr "10.99.0.1:8081")
      (c.portOfAddr "[::1]:9000")
    ];
  }
  {
    name = "workspace version from Cargo.toml";
    expected = true;
    actual = builtins.match "[0-9]+\\.[0-9]+\\.[0-9]+.*" (c.workspaceVersion (root + "/Cargo.toml")) != null;
  }
  {
    name = "RocksDB version librocksdb-sys bundles (from Cargo.lock)";
    expected = true;
    actual = builtins.match "[0-9]+\\.[0-9]+\\.[0-9]+" (c.bundledRocksdbVersion (root + "/Cargo.lock")) != null;
  }
  {
    name = "major.minor comparison";
    expected = [
      true
      false
      false
    ];
    actual = [
      (c.sameMajorMinor "10.4.2" "10.4.0")
      (c.sameMajorMinor "10.4.2" "9.10.0")
      (c.sameMajorMinor "10.4.2" "x")
    ];
  }
  {
    name = "a contract option is read as data: a source path, an attribute set, JSON text; never a store or target path";
    expected = [
      "demo-3"
      "a"
      "b"
      null
      null
      null
    ];
    actual =
      map
        (
          v:
          let
            r = c.fromOption v;
          in
          if r == null then null else r.cluster.name
        )
        [
          (root + "/examples/cluster-3.json")
          {
            version = 2;
            cluster.name = "a";
          }
          ''
            { "version": 2, "cluster": { "name": "b" } }
          ''
          # A file written at evaluation is a store path: pure evaluation refuses to read it.
          (builtins.toFile "c.json" "{}")
          (derivation {
            name = "c.json";
            builder = "/bin/sh";
            system = "x86_64-linux";
          })
          "/etc/plasmacloud/cluster-config.json"
        ];
  }
  {
    name = "a contract option installs as /etc text (data) or source (files)";
    expected = [
      "source"
      "text"
      "text"
      "source"
    ];
    actual = map (v: builtins.head (builtins.attrNames (c.etcEntry v))) [
      (root + "/examples/cluster-3.json")
      { cluster.name = "a"; }
      "{}"
      "/etc/plasmacloud/cluster-config.json"
    ];
  }
  {
    name = "a contract given as data becomes a store file for programs; files stay as they are";
    expected = [
      true
      "/etc/plasmacloud/cluster-config.json"
    ];
    actual = [
      (builtins.match "${builtins.storeDir}/[a-z0-9]{32}-cluster-config.json" (
        builtins.unsafeDiscardStringContext (c.fileOf { cluster.name = "a"; })
      ) != null)
      (c.fileOf "/etc/plasmacloud/cluster-config.json")
    ];
  }
  {
    name = "ports and boot server of no contract are the defaults";
    expected = [
      8080
      8082
    ];
    actual = [
      (c.ports null).iam_api
      (c.bootServer null).management_port
    ];
  }
]
