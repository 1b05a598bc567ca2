# The contract both suites run: examples/cluster-3.json (contract v2) with the test's IAM
# administrator (./test-admin.json: a user name, the argon2id hash the contract carries, and
# the test-only password the checks log in with; the hash was made with `iam-server
# hash-password`) and, for netbooted nodes whose only virtio disk is the data disk, that disk
# on /dev/vda.
#
# The contract is evaluation-time data: the modules get the attribute set itself (they read
# it for ports and the data disk; a store file would have to be read back, which pure
# evaluation refuses), and derivations that want a file get `file`. It carries no secret: the
# nodes' keys are made at enrollment (pxe-boot) or issued in the test script (cluster-bootstrap).
{
  dataDisk ? null,
  ...
}:
let
  contractLib = import ../../../nixos/lib/contract.nix;
  admin = builtins.fromJSON (builtins.readFile ./test-admin.json);
  contract = contractLib.withTestOverrides (contractLib.load ../../../examples/cluster-3.json) {
    device = dataDisk;
    inherit admin;
  };
in
{
  inherit contract contractLib;
  # What the checks log in with (the password stays in the test script, never in the contract).
  login = {
    inherit (admin) username password;
  };
  # For derivations (the bundle, `pxe-server pki issue --cluster`): written at evaluation,
  # never read back.
  file = contractLib.fileOf contract;
}
