# A PXE bundle for a contract: `netboot-image bundle --cluster --netboot --out`. netboot-image
# writes next to its output and renames into place, so it writes under $TMPDIR and the result
# is moved to $out. `secrets` maps a node name to { "<path on node>" = <file>; }: the files
# are copied under DIR/<node>/<path> with mode 0600 (the store's 0444 would be refused as
# world-readable).
{
  lib,
  runCommand,
  netboot-image,
  contract,
  netboot,
  secrets ? { },
  name ? "plasmacloud-bundle",
}:
let
  copySecrets = lib.concatStrings (
    lib.mapAttrsToList (
      node: files:
      lib.concatStrings (
        lib.mapAttrsToList (onNode: file: ''
          install -D -m 0600 ${file} "$secrets/${node}${onNode}"
        '') files
      )
    ) secrets
  );
in
runCommand name { nativeBuildInputs = [ netboot-image ]; } ''
  secrets=$TMPDIR/secrets
  mkdir -p $secrets
  ${copySecrets}
  netboot-image bundle --cluster ${contract} --netboot ${netboot} \
    ${lib.optionalString (secrets != { }) "--secrets $secrets"} --out $TMPDIR/bundle
  mv $TMPDIR/bundle $out
''
