# services.chainfire: the Raft-replicated configuration store (API 2379, Raft 2380, gossip 2381).
import ./raft-store-service.nix {
  name = "chainfire";
  displayName = "Chainfire";
  envPrefix = "PLASMACLOUD_CHAINFIRE";
  apiPortKey = "chainfire_api";
  raftPortKey = "chainfire_raft";
  gossipPortKey = "chainfire_gossip";
}
