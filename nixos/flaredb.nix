# services.flaredb: the Raft-replicated KV store (API 2479, Raft 2480).
import ./raft-store-service.nix {
  name = "flaredb";
  displayName = "FlareDB";
  envPrefix = "PLASMACLOUD_FLAREDB";
  apiPortKey = "flaredb_api";
  raftPortKey = "flaredb_raft";
}
