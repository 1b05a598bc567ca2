# nixosTest: three nodes with the PlasmaCloud modules (installed, not netbooted), started
# together on one VLAN with the contract's addresses and an empty data disk each. They must all
# reach cluster-ready.target with Chainfire and FlareDB at three voters and a leader and IAM
# logging in on the seed; then node03 crashes (power off, data disk kept) and must come back
# as the same Raft member and cluster-ready again.
{
  pkgs,
  plasmacloudModule,
}:
let
  t = import ./lib/test-contract.nix { inherit pkgs; };
  inherit (t) contract contractLib;

  mkNode =
    name:
    { lib, ... }:
    {
      imports = [ plasmacloudModule ];

      virtualisation = {
        vlans = [ 1 ];
        memorySize = 1536;
        cores = 2;
        # /dev/vdb, the contract's data disk (the root disk is /dev/vda).
        emptyDiskImages = [ 1024 ];
      };
      networking.interfaces.eth1.ipv4.addresses = lib.mkForce [
        {
          address = (contractLib.node contract name).ipv4;
          prefixLength = 24;
        }
      ];

      services.plasmacloud.firstboot = {
        enable = true;
        contract = t.file;
        nodeName = name;
        deadline = "15m";
      };
      services.chainfire = {
        enable = true;
        openFirewall = true;
      };
      services.flaredb = {
        enable = true;
        openFirewall = true;
      };
      services.iam = {
        enable = true;
        openFirewall = true;
      };

      environment.etc = lib.mkIf (contractLib.isSeed contract name) {
        "plasmacloud/iam-admin.json" = {
          source = t.credentialFile;
          mode = "0600";
        };
      };
      environment.systemPackages = [ pkgs.curl ];
    };
in
pkgs.testers.runNixOSTest {
  name = "plasmacloud-cluster-bootstrap";

  nodes = pkgs.lib.genAttrs (contractLib.nodeNames contract) mkNode;

  testScript = ''
    ${builtins.readFile ./lib/checks.py}

    contract = json.loads(${builtins.toJSON (builtins.toJSON contract)})
    credential = json.loads(${builtins.toJSON (builtins.toJSON t.credential)})
    machines = [node01, node02, node03]

    with phase("start the three nodes together"):
        start_all()

    ids = check_cluster(machines, contract, credential)

    with phase("crash node03 and check it rejoins as the same member"):
        node03.crash()
        node03.start()
        wait_cluster_ready([node03], timeout=1200)
        again = check_cluster(machines, contract, credential)
        for store in ("chainfire", "flaredb"):
            assert again[store] == ids[store], f"{store} membership changed: {ids[store]} -> {again[store]}"

    with phase("the oneshots are idempotent: re-running the chain changes nothing"):
        node02.succeed("systemctl restart cluster-health-check.service")
        node02.succeed("test -e /run/plasmacloud/cluster-ready")
  '';
}
