#!/usr/bin/env bash
# testbed/vm/build-box.sh - a vagrant-libvirt box from the four-VM testbed's guest image.
#
# Runs build-image.sh with MOSE_VM_VAGRANT=1 into target/testbed/vm-box (the same Debian 12 image
# plus user `vagrant` with Vagrant's insecure key and sudo), then packs the standard
# vagrant-libvirt box format: box.img (qcow2), metadata.json, and a box Vagrantfile that boots
# the kernel and initramfs shipped in the box directly (the image is a whole-disk ext4 without
# partition table or boot loader, like the one `mose-testbed vm` boots).
#
# Usage: testbed/vm/build-box.sh            -> target/testbed/vm-box/mose-debian12.box
#        vagrant box add --name mose/debian12 target/testbed/vm-box/mose-debian12.box
# Idempotent: repacks only when the image changed.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
WS="$(cd "$HERE/../.." && pwd)"
OUT="$WS/target/testbed/vm-box"
BOX="$OUT/mose-debian12.box"
MOSE_VM_VAGRANT=1 MOSE_VM_OUT="$OUT" "$HERE/build-image.sh" "$@"
if [[ -f "$BOX" && "$BOX" -nt "$OUT/image.stamp" ]]; then
  echo "[build-box] up to date: $BOX"
  exit 0
fi
STAGE=$(mktemp -d "$OUT/stage.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
cp --reflink=auto "$OUT/base.qcow2" "$STAGE/box.img"
cp "$OUT/vmlinuz" "$OUT/initrd.img" "$STAGE/"
vsize=$(qemu-img info --output=json "$STAGE/box.img" | sed -n 's/.*"virtual-size": *\([0-9]*\).*/\1/p')
printf '{"provider":"libvirt","format":"qcow2","virtual_size":%d}\n' $(( (vsize + (1<<30) - 1) >> 30 )) >"$STAGE/metadata.json"
cat >"$STAGE/Vagrantfile" <<'VF'
# Box defaults (MOSE-RS four-VM testbed): direct kernel boot of the kernel/initramfs in this box;
# the project's testbed/Vagrantfile adds the role and addresses on the kernel command line.
Vagrant.configure("2") do |config|
  config.vm.synced_folder ".", "/vagrant", disabled: true
  config.vm.provider :libvirt do |lv|
    lv.kernel = File.expand_path("vmlinuz", __dir__)
    lv.initrd = File.expand_path("initrd.img", __dir__)
    lv.disk_bus = "virtio"
  end
end
VF
tar -C "$STAGE" -czf "$BOX.new" metadata.json Vagrantfile box.img vmlinuz initrd.img
mv -f "$BOX.new" "$BOX"
echo "[build-box] $BOX ($(du -h "$BOX" | cut -f1))"
