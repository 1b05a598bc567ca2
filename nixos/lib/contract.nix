# Pure functions over the cluster contract (cluster-config.json) and the workspace's Cargo
# files. Nothing here needs nixpkgs: builtins only, so every function is tested with plain
# `nix-instantiate --eval --strict` (vm-tests/nix-eval-tests.sh), on machines without nixpkgs.
#
# The contract crate (firstboot/contract) owns the schema and its validation; these functions
# only read a contract that crate accepts, with the same defaults (ports, mount point, the
# enrollment port) and the same seed rule (the first initial voter). They read version 2 only:
# an older contract is refused with what `firstboot validate` says to change
# (firstboot/contract/src/migrate.rs).
let
  inherit (builtins)
    attrNames
    concatStringsSep
    filter
    fromJSON
    fromTOML
    head
    isAttrs
    isBool
    isList
    length
    listToAttrs
    map
    match
    readFile
    replaceStrings
    toString
    ;

  # The contract crate's defaults (firstboot/contract/src/wire.rs).
  defaultPorts = {
    chainfire_api = 2379;
    chainfire_raft = 2380;
    chainfire_gossip = 2381;
    flaredb_api = 2479;
    flaredb_raft = 2480;
    iam_api = 8080;
  };
  defaultBootServer = {
    http_port = 8081;
    management_port = 8082;
    enrollment_port = 8443;
  };
  defaultMountPoint = "/var/lib/plasmacloud";

  # The contract version these functions read (firstboot/contract/src/wire.rs: CONTRACT_VERSION).
  contractVersion = 2;

  # What a version-1 contract must change, as firstboot/contract/src/migrate.rs says it (the
  # pure tests check that these texts are the crate's). `version` is how the crate's message
  # names the current version.
  migrationAdvice = version: {
    version = "1 is the old contract format; this release reads version ${version}, which carries no secrets: make the changes listed here, then set \"version\": ${version}";
    tls = "remove it: the cluster CA now lives in pxe-server's state directory (`pxe-server pki init`); to pin it, set pki.ca_sha256 to what `pxe-server pki show` prints";
    nodeTls = "remove it: nodes make their key and get their certificate at enrollment (`firstboot-enroll.service`), or offline with `pxe-server pki issue --node NAME`";
    bootstrapCredential = "replace it with \"admin\": {\"username\": \"…\", \"password_hash\": \"…\"}; make the hash with `iam-server hash-password` (the password itself never goes into the contract)";
  };

  # The problems of a version-1 document, one `path: what to change` line each.
  oldVersionProblems =
    doc:
    let
      advice = migrationAdvice (toString contractVersion);
      nodes = if isList (doc.nodes or null) then doc.nodes else [ ];
    in
    [ "version: ${advice.version}" ]
    ++ (if doc ? tls then [ "tls: ${advice.tls}" ] else [ ])
    ++ builtins.concatLists (
      builtins.genList (
        i:
        if isAttrs (builtins.elemAt nodes i) && (builtins.elemAt nodes i) ? tls then
          [ "nodes[${toString i}].tls: ${advice.nodeTls}" ]
        else
          [ ]
      ) (length nodes)
    )
    ++ (
      if isAttrs (doc.iam or null) && doc.iam ? bootstrap_credential then
        [ "iam.bootstrap_credential: ${advice.bootstrapCredential}" ]
      else
        [ ]
    );

  # The document itself when it is a contract of the version read here; else an evaluation
  # error saying what to change.
  checkVersion =
    doc:
    let
      v = doc.version or null;
    in
    if v == contractVersion then
      doc
    else if v == 1 then
      throw (
        "contract: this is a version-1 contract; version ${toString contractVersion} carries no secrets. What `firstboot validate` says to change (firstboot/contract/src/migrate.rs):\n"
        + concatStringsSep "\n" (map (p: "  - ${p}") (oldVersionProblems doc))
      )
    else
      throw "contract: version ${builtins.toJSON v} is not one this release reads (it reads version ${toString contractVersion}; `firstboot validate` checks a contract)";

  chars = s: builtins.genList (i: builtins.substring i 1 s) (builtins.stringLength s);
  upper = replaceStrings (chars "abcdefghijklmnopqrstuvwxyz-") (chars "ABCDEFGHIJKLMNOPQRSTUVWXYZ_");

  # The one value of a list that satisfies `pred`, or an error naming what was looked for.
  findOne =
    what: pred: list:
    let
      found = filter pred list;
    in
    if length found == 1 then
      head found
    else if found == [ ] then
      throw "contract: no ${what}"
    else
      throw "contract: more than one ${what}";

  self = rec {
    inherit
      defaultPorts
      defaultMountPoint
      contractVersion
      migrationAdvice
      oldVersionProblems
      checkVersion
      ;

    # Reads a contract file (a Nix path, e.g. one in the flake's source); an older version is
    # an evaluation error saying what to change.
    load = path: checkVersion (fromJSON (readFile path));

    # The contract a module option (`services.plasmacloud.firstboot.contract`,
    # `services.pxe-server.cluster`) holds, as evaluation-time data, or null when it holds none.
    # A contract is data the modules read while evaluating, so it must be given as data:
    #   - a Nix path (a file in the flake's source): read;
    #   - an attribute set: the parsed contract itself;
    #   - a string of JSON (it starts with `{`): parsed.
    # Anything else is a file the modules never read: a store path a derivation builds (reading
    # it would need the build, and pure evaluation refuses absolute store paths) or a file on
    # the target machine (`/etc/plasmacloud/cluster-config.json`). The built-in defaults then
    # apply. Whatever is read must be a version-2 contract (else an evaluation error).
    fromOption =
      v:
      if builtins.isPath v then
        load v
      else if isAttrs v then
        (if (v.type or null) == "derivation" then null else checkVersion v)
      else if builtins.isString v && isJsonText v then
        checkVersion (fromJSON v)
      else
        null;

    # The type of an option holding a contract in one of the forms `fromOption` reads (the
    # only function here that takes nixpkgs' lib).
    optionType =
      lib:
      lib.types.oneOf [
        lib.types.path
        (lib.types.attrsOf lib.types.anything)
        lib.types.str
      ];

    # A file holding what a contract option holds, for a program to read at run time: the
    # attribute set or JSON text written to the store at evaluation (builtins.toFile: written,
    # never read back), anything else as it is.
    fileOf =
      v:
      if isAttrs v && (v.type or null) != "derivation" then
        builtins.toFile "cluster-config.json" (builtins.toJSON v)
      else if builtins.isString v && isJsonText v then
        builtins.toFile "cluster-config.json" v
      else
        v;

    # Is this string a contract's JSON text (not a file name)?
    isJsonText = s: match "[[:space:]]*[{].*" s != null;

    # The `environment.etc.<name>` entry that installs what a contract option holds.
    etcEntry =
      v:
      if builtins.isPath v || (isAttrs v && (v.type or null) == "derivation") then
        { source = v; }
      else if isAttrs v then
        { text = builtins.toJSON v; }
      else if isJsonText v then
        { text = v; }
      else
        { source = v; };

    # Where things live on a node (firstboot/contract/src/lib.rs): the enrollment initrd's
    # directory and files, and the node's key material under its state directory (the data
    # disk): `node.key` (0600), `node.crt`, `ca.crt`.
    enrollDir = "/etc/plasmacloud/enroll";
    enrollTokenFile = "token";
    enrollCaFile = "ca.crt";
    nodePkiDir = "pki";
    nodeTlsFiles = stateDir: {
      cert = "${stateDir}/${nodePkiDir}/node.crt";
      key = "${stateDir}/${nodePkiDir}/node.key";
      ca = "${stateDir}/${nodePkiDir}/ca.crt";
    };

    # The first IAM administrator ({ username, password_hash }), or null.
    iamAdmin = contract: if contract == null then null else (contract.iam or { }).admin or null;

    # The pinned CA fingerprint (`pki.ca_sha256`), or null.
    caSha256 = contract: if contract == null then null else (contract.pki or { }).ca_sha256 or null;

    # An argon2id PHC string with parameters, salt and hash (`iam-server hash-password`).
    isArgon2idHash =
      s:
      builtins.isString s
      && match "[$]argon2id[$]v=[0-9]+[$]m=[0-9]+,t=[0-9]+,p=[0-9]+[$][A-Za-z0-9+/]+[$][A-Za-z0-9+/]+" s != null;

    # 64 lowercase hex digits (what `pxe-server pki show` prints).
    isFingerprint = s: builtins.isString s && match "[0-9a-f]{64}" s != null;

    # What the modules assert about a contract they read (the contract crate checks the rest):
    # the admin's password is a hash, never the password, and a pinned CA is a fingerprint.
    problems =
      contract:
      let
        admin = iamAdmin contract;
        pin = caSha256 contract;
      in
      (
        if admin != null && !(isArgon2idHash (admin.password_hash or null)) then
          [
            "iam.admin.password_hash is not an argon2id PHC string (expected $argon2id$v=19$m=…,t=…,p=…$salt$hash; never the password itself): make one with `iam-server hash-password` (it reads the password from stdin)"
          ]
        else
          [ ]
      )
      ++ (
        if pin != null && !(isFingerprint pin) then
          [
            "pki.ca_sha256 ${builtins.toJSON pin} is not a SHA-256 fingerprint (expected 64 lowercase hex digits, as `pxe-server pki show` prints)"
          ]
        else
          [ ]
      );

    # The service ports, with the contract crate's defaults filled in (all defaults for a
    # null contract).
    ports = contract: defaultPorts // (if contract == null then { } else contract.ports or { });

    # The boot server entry, with default ports (only the ports for a null contract).
    bootServer =
      contract: defaultBootServer // (if contract == null then { } else contract.boot_server);

    nodeNames = contract: map (n: n.name) contract.nodes;

    node = contract: name: findOne "node named ${name}" (n: n.name == name) contract.nodes;

    nodeByMac = contract: mac: findOne "node with mac ${mac}" (n: n.mac == mac) contract.nodes;

    # The initial Raft voters, in contract order; the first one is the seed.
    voters = contract: contract.initial_voters;
    seed = contract: head contract.initial_voters;
    isSeed = contract: name: seed contract == name;
    isVoter = contract: name: builtins.elem name contract.initial_voters;

    # The data disk of a node, with the crate's defaults.
    disk =
      contract: name:
      {
        filesystem = "ext4";
        label = "plasmacloud";
        mount_point = defaultMountPoint;
        wipe_foreign = false;
      }
      // (node contract name).disk;

    # Where a node's data disk is mounted.
    mountPoint = contract: name: (disk contract name).mount_point;

    # `https://ip:port` of a service's API on a node (`chainfire`, `flaredb` or `iam`): every
    # service port speaks TLS.
    apiUrl =
      contract: service: name:
      let
        n = node contract name;
        p = ports contract;
        port =
          {
            chainfire = p.chainfire_api;
            flaredb = p.flaredb_api;
            iam = p.iam_api;
          }
          .${service};
      in
      "https://${n.ipv4}:${toString port}";

    # The voters' API URLs of a service, in contract order.
    voterUrls = contract: service: map (apiUrl contract service) (voters contract);

    # TCP ports a cluster node listens on (what `openFirewall` opens on a node).
    nodeTcpPorts =
      contract:
      let
        p = ports contract;
      in
      [
        p.chainfire_api
        p.chainfire_raft
        p.chainfire_gossip
        p.flaredb_api
        p.flaredb_raft
        p.iam_api
      ];

    # pxe-server's HTTPS endpoints as the nodes reach them: enrollment (`/v1/enroll`) and
    # management (phase reports).
    enrollmentUrl =
      contract:
      let
        bs = bootServer contract;
      in
      "https://${bs.address}:${toString bs.enrollment_port}";
    managementUrl =
      contract:
      let
        bs = bootServer contract;
      in
      "https://${bs.address}:${toString bs.management_port}";

    # What the provisioning server listens on: DHCP (67), TFTP (69), PXE (4011) over UDP; the
    # boot plane, the management API and enrollment over TCP.
    bootServerPorts =
      contract:
      let
        bs = bootServer contract;
      in
      {
        udp = [
          67
          69
          4011
        ];
        tcp = [
          bs.http_port
          bs.management_port
          bs.enrollment_port
        ];
      };

    # The port of an `ip:port` (or `[v6]:port`) address.
    portOfAddr =
      addr:
      let
        m = match ".*:([0-9]+)" addr;
      in
      if m == null then throw "${addr} is not ip:port" else fromJSON (head m);

    # A node's network identity as NixOS options want it.
    nodeNetwork =
      contract: name:
      let
        n = node contract name;
      in
      {
        hostName = n.name;
        macAddress = n.mac;
        address = n.ipv4;
        prefixLength = 24;
      };

    # A node's data disk the disko way: one GPT partition over the whole disk, the
    # contract's filesystem and label, mounted at the contract's mount point. This is the
    # layout `firstboot disk` makes on first boot (it never reformats a disk carrying the
    # label), so disko and the oneshot agree.
    diskoDevices =
      contract: name:
      let
        d = disk contract name;
      in
      {
        disk.data = {
          type = "disk";
          device = d.device;
          content = {
            type = "gpt";
            partitions.${d.label} = {
              # The partition name `firstboot disk` gives it too (disko's default is
              # disk-<disk>-<partition>).
              label = d.label;
              size = "100%";
              content = {
                type = "filesystem";
                format = d.filesystem;
                mountpoint = d.mount_point;
                extraArgs = [
                  "-L"
                  d.label
                ];
                mountOptions = [ "nofail" ];
              };
            };
          };
        };
      };

    # The contract with every node's data disk on `device` (a VM whose only virtio disk is the
    # data disk sees it as /dev/vda) and, when `admin` ({ username, password_hash }) is not
    # null, that IAM administrator.
    withTestOverrides =
      contract:
      {
        device ? null,
        admin ? null,
      }:
      contract
      // {
        nodes = map (
          n: if device == null then n else n // { disk = (n.disk or { }) // { inherit device; }; }
        ) contract.nodes;
      }
      // (
        if admin == null then
          { }
        else
          {
            iam = (contract.iam or { }) // {
              admin = { inherit (admin) username password_hash; };
            };
          }
      );

    # A module's freeform `settings` as the environment variables the binaries read
    # (`PLASMACLOUD_<SERVICE>_<KEY>`; flags and variables win over the TOML file). Lists are
    # comma-separated (what clap's value_delimiter and the `chainfire` key expect), booleans
    # `true`/`false`, null values are dropped.
    settingsToEnv =
      prefix: settings:
      let
        render =
          key: v:
          if isList v then
            concatStringsSep "," (map toString v)
          else if isBool v then
            (if v then "true" else "false")
          else if isAttrs v then
            throw "settings.${key}: nested tables have no environment form"
          else
            toString v;
        keys = filter (k: settings.${k} != null) (attrNames settings);
      in
      listToAttrs (
        map (k: {
          name = "${prefix}_${upper k}";
          value = render k settings.${k};
        }) keys
      );

    # The workspace version from the root Cargo.toml's [workspace.package].
    workspaceVersion = cargoToml: (fromTOML (readFile cargoToml)).workspace.package.version;

    # The RocksDB version librocksdb-sys bundles (`0.17.3+10.4.2` → `10.4.2`), read from
    # Cargo.lock: the nixpkgs rocksdb we link must have the same major.minor.
    bundledRocksdbVersion =
      cargoLock:
      let
        pkg = findOne "librocksdb-sys in Cargo.lock" (p: p.name == "librocksdb-sys") (
          fromTOML (readFile cargoLock)
        ).package;
        m = match "[^+]*\\+(.*)" pkg.version;
      in
      if m == null then throw "librocksdb-sys ${pkg.version} names no RocksDB version" else head m;

    # Do two versions share major.minor?
    sameMajorMinor =
      a: b:
      let
        mm = v: match "([0-9]+)\\.([0-9]+).*" v;
      in
      mm a != null && mm a == mm b;
  };
in
self
