#!/usr/bin/env bash
# testbed/vm/build-image.sh - guest image of the four-VM testbed (docs/vm.md, "The guest image").
#
# Builds OFFLINE from Debian's archive only (mmdebstrap; no cloud image, no registry):
#   Debian 12, kernel 6.1 (linux-image-amd64), systemd, podman + runc (podman told to use runc),
#   conmon, Open vSwitch, iproute2, ethtool, iperf3, openssh-server (management only), CRIU:
#   Debian's 3.17 AND the host's 4.2.1 build from /usr/local (setup-host.sh's, same bookworm libc)
#   - the guest's first boot runs `criu check` with both and puts the one that passes first on PATH;
#   our release binaries (mose-agent, mose-orchestrator, mose-testbed) and the workload images
#   (docker-archive tars of testbed/src/images.rs, `podman load`ed at boot: same image IDs on every VM);
#   the node setup (testbed/vm/guest/): roles and addresses come from the kernel command line.
#
# Output, under target/testbed/vm/:
#   base.qcow2          the root filesystem (ext4 without partition table: /dev/vda, direct kernel boot)
#   vmlinuz, initrd.img the guest kernel and initramfs, for `qemu -kernel/-initrd`
#   id_ed25519[.pub]    the management key (root login over the VM's host-forwarded port, testbed only)
#   image.stamp         hash of the inputs: a second run with the same inputs does nothing
#
# Usage: testbed/vm/build-image.sh [--force]      (root; installs its tools with apt if missing)
#
# MOSE_VM_VAGRANT=1 (build-box.sh sets it, with MOSE_VM_OUT=target/testbed/vm-box): the same image
# plus what a vagrant-libvirt box needs: user `vagrant` with Vagrant's published insecure key
# (taken from Debian's vagrant package, downloaded from the archive, not installed), sudo.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
WS="$(cd "$HERE/../.." && pwd)"
OUT="${MOSE_VM_OUT:-$WS/target/testbed/vm}"
REL="${MOSE_VM_BINARIES:-$WS/target/release}"
IMAGES="$WS/target/testbed/images"
CRIU_STAGE="${MOSE_CRIU_STAGE:-/var/cache/mose/criu/4.2.1/stage}"
SUITE=bookworm
MIRROR=http://deb.debian.org/debian
DISK_SIZE=4G
FORCE=0
VAGRANT=${MOSE_VM_VAGRANT:-0}
[[ "${1:-}" == "--force" ]] && FORCE=1

log() { printf '[build-image %(%T)T] %s\n' -1 "$*"; }
die() { printf '[build-image] FATAL: %s\n' "$*" >&2; exit 1; }
[[ $(id -u) == 0 ]] || die "run as root (mmdebstrap in root mode, mke2fs -d keeps ownership)"

# ------------------------------------------------------------------ tools (idempotent apt)
APT=(apt-get -o DPkg::Lock::Timeout=600 -y -q --no-install-recommends)
need=()
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v qemu-img >/dev/null || need+=(qemu-utils)
command -v mke2fs >/dev/null || need+=(e2fsprogs)
command -v ssh-keygen >/dev/null || need+=(openssh-client)
if ((${#need[@]})); then
  # apt hygiene (docs/operations.md, "Host facts the code relies on"): this machine may carry a
  # qemu-utils backport that conflicts with bookworm's qemu-system-common; take qemu-utils from
  # bookworm with it rather than removing it.
  pkgs=()
  for p in "${need[@]}"; do pkgs+=("$p"); done
  if [[ " ${need[*]} " == *" qemu-system-x86 "* ]] && dpkg -s qemu-utils >/dev/null 2>&1; then
    pkgs+=("qemu-utils/$SUITE")
  fi
  log "installing ${pkgs[*]}"
  # Refuse anything that would touch libc6.
  if DEBIAN_FRONTEND=noninteractive "${APT[@]}" -s install --allow-downgrades "${pkgs[@]}" \
      | grep -q '^Inst libc6 '; then
    die "installing ${pkgs[*]} would change libc6; install them by hand from $SUITE"
  fi
  DEBIAN_FRONTEND=noninteractive "${APT[@]}" install --allow-downgrades "${pkgs[@]}"
fi

# ------------------------------------------------------------------ inputs and the stamp
for b in mose-agent mose-orchestrator mose-testbed; do
  [[ -x "$REL/$b" ]] || die "$REL/$b missing: cargo build --release -p mose-testbed -p mose-agent -p mose-orchestrator"
done
shopt -s nullglob
ARCHIVES=()
for t in "$IMAGES"/*.tar; do
  [[ "$t" == *-rootfs.tar ]] || ARCHIVES+=("$t")
done
((${#ARCHIVES[@]})) || die "no workload image archives in $IMAGES: run the testbed once (\`mose-testbed up\` or its tests build them)"
[[ -x "$CRIU_STAGE/usr/local/sbin/criu" ]] || log "no CRIU 4.2.1 stage at $CRIU_STAGE: the guest gets Debian's 3.17 only"

mkdir -p "$OUT"
[[ -f "$OUT/id_ed25519" ]] || ssh-keygen -q -t ed25519 -N '' -C mose-vm-testbed -f "$OUT/id_ed25519"

inputs_hash() {
  {
    echo "$SUITE $MIRROR $DISK_SIZE vagrant=$VAGRANT"
    sha256sum "$HERE/build-image.sh" "$HERE"/guest/* "$REL/mose-agent" "$REL/mose-orchestrator" \
      "$REL/mose-testbed" "${ARCHIVES[@]}" "$OUT/id_ed25519.pub" | awk '{print $1}'
    [[ -d "$CRIU_STAGE" ]] && find "$CRIU_STAGE" -type f -exec sha256sum {} + | awk '{print $1}' | sort
  } | sha256sum | awk '{print $1}'
}
HASH=$(inputs_hash)
if ((FORCE == 0)) && [[ -f "$OUT/image.stamp" && "$(cat "$OUT/image.stamp")" == "$HASH" \
      && -f "$OUT/base.qcow2" && -f "$OUT/vmlinuz" && -f "$OUT/initrd.img" ]]; then
  log "up to date ($OUT/base.qcow2, inputs $HASH): nothing to do"
  exit 0
fi

# ------------------------------------------------------------------ bootstrap
T0=$SECONDS
WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/mose-vm-image.XXXXXX")
cleanup() { rm -rf --one-file-system "$WORK"; }
trap cleanup EXIT
ROOT="$WORK/root"

PKGS=(
  linux-image-amd64 systemd systemd-sysv udev dbus kmod procps iproute2 iputils-ping ethtool
  podman runc conmon catatonit netavark iptables nftables
  criu libnftables1 libbsd0 libgnutls30 libprotobuf-c1 libnl-3-200 libnet1 libuuid1
  openvswitch-switch openvswitch-common
  openssh-server iperf3 less
)
((VAGRANT)) && PKGS+=(sudo)
log "mmdebstrap $SUITE (${#PKGS[@]} packages + deps)"
mmdebstrap --variant=apt --mode=root --format=directory \
  --aptopt='APT::Install-Recommends "false"' \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --include="$(IFS=,; echo "${PKGS[*]}")" \
  "$SUITE" "$ROOT" \
  "deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main" \
  "deb http://deb.debian.org/debian-security $SUITE-security main" >"$WORK/mmdebstrap.log" 2>&1 \
  || { tail -30 "$WORK/mmdebstrap.log" >&2; die "mmdebstrap failed"; }
log "bootstrap done in $((SECONDS - T0)) s"

# ------------------------------------------------------------------ customise
install -m 0755 "$REL/mose-agent" "$REL/mose-orchestrator" "$REL/mose-testbed" "$ROOT/usr/local/bin/"
mkdir -p "$ROOT/usr/local/share/mose/images"
cp "${ARCHIVES[@]}" "$ROOT/usr/local/share/mose/images/"
# The host's CRIU 4.2.1 (setup-host.sh built it from Debian sid's source with bookworm's toolchain)
# goes to /usr/local/lib/mose-criu, not on PATH: the first boot picks the CRIU that passes
# `criu check` in this kernel and links it to /usr/local/sbin/criu.
if [[ -x "$CRIU_STAGE/usr/local/sbin/criu" ]]; then
  mkdir -p "$ROOT/usr/local/lib/mose-criu"
  cp -a "$CRIU_STAGE/usr/local/sbin/criu" "$ROOT/usr/local/lib/mose-criu/criu-4.2.1"
  [[ -d "$CRIU_STAGE/usr/local/libexec" ]] && cp -a "$CRIU_STAGE/usr/local/libexec/." "$ROOT/usr/local/libexec/"
fi
install -m 0755 "$HERE/guest/mose-node-setup" "$ROOT/usr/local/sbin/mose-node-setup"
install -m 0644 "$HERE/guest/mose-node.service" "$ROOT/etc/systemd/system/mose-node.service"
ln -sf /etc/systemd/system/mose-node.service "$ROOT/etc/systemd/system/multi-user.target.wants/mose-node.service"

# podman: runc (Debian's crun 1.8 cannot checkpoint), netavark.
mkdir -p "$ROOT/etc/containers/containers.conf.d"
cat >"$ROOT/etc/containers/containers.conf.d/mose-runtime.conf" <<'EOF'
# Written by MOSE-RS testbed/vm/build-image.sh (as setup-host.sh does on hosts)
[engine]
runtime = "runc"
[network]
network_backend = "netavark"
EOF

# The root filesystem is the whole disk (no partition table), booted with -kernel/-initrd.
echo '/dev/vda / ext4 rw,noatime 0 1' >"$ROOT/etc/fstab"
: >"$ROOT/etc/machine-id"            # every VM (overlay) makes its own on first boot
rm -f "$ROOT/var/lib/dbus/machine-id"
echo mose-vm >"$ROOT/etc/hostname"
# Console: root logs in on the serial console without password (testbed VMs, no network login
# except the management key).
chroot "$ROOT" passwd -d root >/dev/null
mkdir -p "$ROOT/etc/systemd/system/serial-getty@ttyS0.service.d"
cat >"$ROOT/etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf" <<'EOF'
[Service]
ExecStart=
ExecStart=-/sbin/agetty --autologin root --keep-baud 115200,57600,38400,9600 %I $TERM
EOF
install -d -m 0700 "$ROOT/root/.ssh"
install -m 0600 "$OUT/id_ed25519.pub" "$ROOT/root/.ssh/authorized_keys"
cat >"$ROOT/etc/ssh/sshd_config.d/mose.conf" <<'EOF'
PermitRootLogin prohibit-password
PasswordAuthentication no
UseDNS no
EOF
if ((VAGRANT)); then
  # Vagrant's insecure public key, from Debian's vagrant package (not installed here).
  if [[ ! -f "$OUT/vagrant.pub" ]]; then
    (cd "$WORK" && apt-get -o APT::Sandbox::User=root download vagrant >/dev/null && dpkg-deb -x vagrant_*.deb vg)
    key=$(find "$WORK/vg" -path '*keys/vagrant.pub' | head -1)
    [[ -n $key ]] || die "no keys/vagrant.pub in Debian's vagrant package"
    cp "$key" "$OUT/vagrant.pub"
  fi
  chroot "$ROOT" useradd -m -s /bin/bash vagrant
  install -d -m 0700 -o 1000 -g 1000 "$ROOT/home/vagrant/.ssh"
  install -m 0600 -o 1000 -g 1000 "$OUT/vagrant.pub" "$ROOT/home/vagrant/.ssh/authorized_keys"
  echo 'vagrant ALL=(ALL) NOPASSWD: ALL' >"$ROOT/etc/sudoers.d/vagrant"
  chmod 0440 "$ROOT/etc/sudoers.d/vagrant"
  sed -i 's/^PasswordAuthentication no/PasswordAuthentication no\nAllowUsers root vagrant/' "$ROOT/etc/ssh/sshd_config.d/mose.conf"
fi
# Faster boots under TCG: nothing waits for a network that is configured by mose-node.
for u in systemd-networkd-wait-online.service apt-daily.timer apt-daily-upgrade.timer \
         e2scrub_all.timer fstrim.timer man-db.timer; do
  ln -sf /dev/null "$ROOT/etc/systemd/system/$u"
done
# Journald: volatile, small.
mkdir -p "$ROOT/etc/systemd/journald.conf.d"
printf '[Journal]\nStorage=volatile\nRuntimeMaxUse=32M\n' >"$ROOT/etc/systemd/journald.conf.d/mose.conf"
# Kernel and initramfs for direct boot.
KVER=$(ls "$ROOT/lib/modules" | sort -V | tail -1)
[[ -f "$ROOT/boot/vmlinuz-$KVER" && -f "$ROOT/boot/initrd.img-$KVER" ]] || die "no kernel/initrd for $KVER in the image"
rm -rf "$ROOT/var/cache/apt/archives/"*.deb "$ROOT/var/lib/apt/lists/"*

# ------------------------------------------------------------------ disk
log "ext4 image ($DISK_SIZE) from the tree, then qcow2"
rm -f "$WORK/root.raw"
mke2fs -q -t ext4 -L mose-root -d "$ROOT" "$WORK/root.raw" "$DISK_SIZE"
qemu-img convert -f raw -O qcow2 "$WORK/root.raw" "$OUT/base.qcow2.new"
cp "$ROOT/boot/vmlinuz-$KVER" "$OUT/vmlinuz.new"
cp "$ROOT/boot/initrd.img-$KVER" "$OUT/initrd.img.new"
{
  echo "kernel $KVER"
  chroot "$ROOT" dpkg-query -W -f '${Package} ${Version}\n' linux-image-amd64 podman runc conmon criu openvswitch-switch systemd
  [[ -x "$ROOT/usr/local/lib/mose-criu/criu-4.2.1" ]] && echo "criu (host build) 4.2.1 at /usr/local/lib/mose-criu"
  echo "images: $(cd "$ROOT/usr/local/share/mose/images" && ls | tr "\n" " ")"
  echo "root tree: $(du -sh --apparent-size "$ROOT" | cut -f1)"
} >"$OUT/image.manifest.new"
for f in base.qcow2 vmlinuz initrd.img image.manifest; do mv -f "$OUT/$f.new" "$OUT/$f"; done
echo "$HASH" >"$OUT/image.stamp"
log "done in $((SECONDS - T0)) s: $OUT/base.qcow2 ($(du -h "$OUT/base.qcow2" | cut -f1)), kernel $KVER"
cat "$OUT/image.manifest"
