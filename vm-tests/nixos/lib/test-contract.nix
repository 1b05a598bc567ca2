# The contract both suites run: examples/cluster-3.json with an IAM bootstrap credential (so
# the seed creates an admin the checks log in with) and, for netbooted nodes whose only virtio
# disk is the data disk, that disk on /dev/vda.
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
  inherit contract credential credentialPath contractLib;
  # builtins.toFile, not writeText: a store file made at evaluation, which the modules can
  # read for their port defaults without import-from-derivation.
  file = builtins.toFile "cluster-config.json" (builtins.toJSON contract);
  credentialFile = builtins.toFile "iam-admin.json" (builtins.toJSON credential);
}
