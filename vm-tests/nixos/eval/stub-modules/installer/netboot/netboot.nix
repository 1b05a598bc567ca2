# Stand-in for nixpkgs' installer/netboot/netboot.nix in the local evalModules check.
{ }
