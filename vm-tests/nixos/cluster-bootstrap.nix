# nixosTest: three nodes with the PlasmaCloud modules (installed, not netbooted), started
# together on one VLAN with the contract's addresses and an empty data disk each. They must all
# reach cluster-ready.target with Chainfire and FlareDB at three voters and a leader and IAM
# logging in on the seed, every service healthy (the rack harness's cold-boot checks); then the
# rack's leader-loss scenario: the Chainfire leader crashes (power off, disks kept), the other
# two keep taking writes, and it comes back as the same member with the write.
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
          inherit (contractLib.nodeNetwork contract name) address;
          prefixLength = 24;
        }
      ];

      services.plasmacloud.firstboot = {
        enable = true;
        inherit contract;
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
    cluster = Cluster([node01, node02, node03], contract, credential)

    with phase("start the three nodes together"):
        start_all()

    check_cluster(cluster)

    with phase("leader loss: the Chainfire leader crashes, the others take writes, it rejoins"):
        scenario_leader_loss(cluster)

    with phase("after the rejoin the cluster passes the cold-boot checks again"):
        check_cluster(cluster)

    with phase("the oneshots are idempotent: re-running the health check changes nothing"):
        node02.succeed("systemctl restart cluster-health-check.service")
        node02.succeed("test -e /run/plasmacloud/cluster-ready")
  '';
}
