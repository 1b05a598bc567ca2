# node03's data disk the disko way, derived from examples/cluster-3.json (device, filesystem,
# label, mount point), so the layout and the contract cannot drift apart.
let
  contractLib = import ../../lib/contract.nix;
  contract = contractLib.load ../../../examples/cluster-3.json;
in
{
  disko.devices = contractLib.diskoDevices contract "node03";
}
