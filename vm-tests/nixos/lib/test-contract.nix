# The contract both suites run: examples/cluster-3.json with an IAM bootstrap credential (so
# the seed creates an admin the checks log in with) and, for netbooted nodes whose only virtio
# disk is the data disk, that disk on /dev/vda.
#
# The contract is evaluation-time data: the modules get the attribute set itself (they read
# it for ports and the data disk; a store file would have to be read back, which pure
# evaluation refuses), and derivations that want a file get `file`.
{
  dataDisk ? null,
  ...
}:
let
  contractLib = import ../../../nixos/lib/contract.nix;
  credentialPath = "/etc/plasmacloud/iam-admin.json";
  contract = contractLib.withTestOverrides (contractLib.load ../../../examples/cluster-3.json) {
    device = dataDisk;
    credential = credentialPath;
  };
  # Test-only credentials.
  credential = {
    username = "admin";
    password = "nixos-test-only-password";
  };
in
{
  inherit
    contract
    credential
    credentialPath
    contractLib
    ;
  # For derivations (the bundle): written at evaluation, never read back.
  file = contractLib.fileOf contract;
  credentialFile = builtins.toFile "iam-admin.json" (builtins.toJSON credential);
}
