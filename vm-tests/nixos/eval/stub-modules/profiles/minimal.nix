# Stand-in for nixpkgs' profiles/minimal.nix in the local evalModules check.
{ }
