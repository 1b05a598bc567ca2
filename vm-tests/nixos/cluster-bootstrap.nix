# nixosTest: three nodes with the PlasmaCloud modules (installed, not netbooted), started
# together on one VLAN with the contract's addresses and an empty data disk each. Nothing
# PXE-boots them, so they get their certificates the offline way: the test script makes a
# cluster CA and a certificate per node with `pxe-server pki init` / `pki issue --node` (on the
# driver's side, never in the store), the nodes' chain stops at firstboot-enroll saying so,
# and the files are copied to each node's `<state>/pki/` before the chain is started again —
# what an operator does for installed machines. Then they must all reach cluster-ready.target
# with Chainfire and FlareDB at three voters and a leader, TLS only, the contract's admin
# logging in on the seed, every service healthy (the rack harness's cold-boot checks); then the
# rack's leader-loss scenario: the Chainfire leader crashes (power off, disks kept), the other
# two keep taking writes, and it comes back as the same member with the write, and with the
# certificate it kept on its data disk.
{
  pkgs,
  plasmacloudModule,
  packages,
}:
let
  t = import ./lib/test-contract.nix { inherit pkgs; };
  inherit (t) contract contractLib;
  names = contractLib.nodeNames contract;

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

      environment.systemPackages = [ pkgs.curl ];
    };
in
pkgs.testers.runNixOSTest {
  name = "plasmacloud-cluster-bootstrap";

  nodes = pkgs.lib.genAttrs names mkNode;

  testScript = ''
    import os
    import subprocess

    ${builtins.readFile ./lib/checks.py}

    contract = json.loads(${builtins.toJSON (builtins.toJSON contract)})
    login = json.loads(${builtins.toJSON (builtins.toJSON t.login)})
    cluster = Cluster([node01, node02, node03], contract, login)
    names = ${builtins.toJSON names}
    pxe_server = "${packages.pxe-server}/bin/pxe-server"
    contract_file = "${t.file}"
    ca_state = os.path.join(os.environ["TMPDIR"], "pxe-server-state")
    issued = os.path.join(os.environ["TMPDIR"], "issued")


    def pki(*args: str) -> str:
        r = subprocess.run([pxe_server, "pki", *args], check=True, capture_output=True, text=True)
        print(r.stdout + r.stderr)
        return r.stdout


    with phase("offline issuance: a cluster CA and a certificate for each node (pxe-server pki)"):
        pki("init", "--state-dir", ca_state, "--cluster", contract_file)
        for name in names:
            pki("issue", "--state-dir", ca_state, "--node", name, "--cluster", contract_file,
                "--out", os.path.join(issued, name))
        listed = pki("list", "--state-dir", ca_state)
        for name in names:
            assert name in listed, f"pki list does not show {name}: {listed}"

    with phase("start the three nodes together: without a certificate the chain stops at enrollment"):
        start_all()
        for m in cluster.machines.values():
            m.wait_until_succeeds("systemctl is-failed firstboot-enroll.service", timeout=900)
            m.succeed("journalctl -b -u firstboot-enroll.service | grep -q 'pxe-server pki issue --node'")
            m.fail("systemctl is-active chainfire.service")

    with phase("the operator copies each node's key and certificate to <state>/pki and starts the chain"):
        for m in cluster.machines.values():
            d = cluster.pki(m.name)
            m.copy_from_host(os.path.join(issued, m.name), f"{d}.new")
            m.succeed(f"rm -rf {d} && mv {d}.new {d} && chown -R root:root {d}",
                      f"chmod 0700 {d} && chmod 0600 {d}/node.key && chmod 0644 {d}/node.crt {d}/ca.crt")
            m.succeed("systemctl start --no-block cluster-ready.target")

    check_cluster(cluster)

    with phase("leader loss: the Chainfire leader crashes, the others take writes, it rejoins"):
        scenario_leader_loss(cluster)

    with phase("after the rejoin the cluster passes the cold-boot checks again"):
        check_cluster(cluster)

    with phase("every node's last enrollment kept the certificate on its data disk"):
        for m in cluster.machines.values():
            m.succeed("journalctl -b -u firstboot-enroll.service | grep -q 'holds its certificate already'")

    with phase("the oneshots are idempotent: re-running the health check changes nothing"):
        node02.succeed("systemctl restart cluster-health-check.service")
        node02.succeed("test -e /run/plasmacloud/cluster-ready")
  '';
}
