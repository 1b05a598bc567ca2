# node03 of examples/cluster-3.json, installed on its own disk (not netbooted): the contract
# and the node's name are baked in, the data disk is described in ./disko.nix.
{ ... }:
{
  imports = [
    ../node-common.nix
    ./disko.nix
  ];

  plasmacloud.node.name = "node03";
}
