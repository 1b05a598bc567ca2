# A PXE bundle for a contract: `netboot-image bundle --cluster --netboot --out`. netboot-image
# writes next to its output and renames into place, so it writes under $TMPDIR and the result
# is moved to $out.
#
# A bundle is public and so may live in the store: kernel, base initrd, and per node an overlay
# with the contract and the node's name (`overlay-<node>.cpio.zst`, manifest v2). It carries no
# key, password or token: nodes make their keys at enrollment, with the single-use token
# pxe-server serves per boot (netboot-image refuses `--secrets`).
{
  runCommand,
  netboot-image,
  contract,
  netboot,
  name ? "plasmacloud-bundle",
}:
runCommand name { nativeBuildInputs = [ netboot-image ]; } ''
  netboot-image bundle --cluster ${contract} --netboot ${netboot} --out $TMPDIR/bundle
  mv $TMPDIR/bundle $out
''
