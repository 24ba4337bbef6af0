#!/usr/bin/env bash
# testbed/setup-host.sh - MOSE-RS host setup: a fixed command (docs/operations.md, "Fixed names");
# why each dependency and check is needed: docs/operations.md, "Host facts the code relies on".
#
# Installs, configures and VERIFIES every system dependency of MOSE-RS on a Debian 12
# (bookworm) host, as root:
#   * packages: podman + runc (+ conmon), iproute2, ethtool, iptables/nftables, Open vSwitch
#     (userspace datapath; our code starts the daemons per emulated host, so no system
#     ovsdb-server/ovs-vswitchd may be left running), iperf3, memcached, mosquitto, sqlite3,
#     python3, busybox-static (rootfs of the probe image);
#   * podman is told to use runc (Debian's crun 1.8 cannot checkpoint);
#   * a CRIU that really works on this kernel: the one on PATH / Debian's if `criu check` and a
#     real TCP dump+restore pass, else Debian sid's binary if it does not need a newer libc6,
#     else CRIU built from Debian sid's SOURCE package into /usr/local (cached in /var/cache/mose);
#   * end-to-end checks: CRIU TCP probe, netns + veth + ethtool + OvS userspace bridge, and a
#     podman run + checkpoint --export + restore --import round trip with --tcp-established.
#
# Idempotent: a second run installs nothing, rebuilds nothing, rewrites no file; it only
# re-runs the checks (a few seconds). Exit status is non-zero when the host is unusable.
#
# Environment knobs (optional):
#   MOSE_CACHE_DIR  where the CRIU source/build/staging is cached (default /var/cache/mose)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly SCRIPT_DIR
readonly TCP_PROBE_PY="$SCRIPT_DIR/setup/criu_tcp_probe.py"
readonly CACHE_DIR="${MOSE_CACHE_DIR:-/var/cache/mose}"
readonly CRIU_CACHE="$CACHE_DIR/criu"
readonly CRIU_PREFIX=/usr/local
readonly SID_SOURCES=/etc/apt/sources.list.d/mose-sid.sources
readonly SID_PIN=/etc/apt/preferences.d/mose-sid
readonly PODMAN_DROPIN=/etc/containers/containers.conf.d/mose-runtime.conf
readonly PROBE_IMAGE=localhost/mose-probe:latest
# The Python that ships with Debian, not whatever shim comes first on PATH (pyenv etc.):
# the probe must not depend on a developer's toolchain.
readonly SYS_PY=/usr/bin/python3

# Other engineers may run apt at the same time: wait for the dpkg lock instead of failing.
APT=(apt-get -o DPkg::Lock::Timeout=600 -o Dpkg::Options::=--force-confdef
     -o Dpkg::Options::=--force-confold -o APT::Sandbox::User=root -y -q)
export DEBIAN_FRONTEND=noninteractive
# Runtime packages. Installed with --no-install-recommends: podman's Recommends pull in
# dbus-user-session (systemd bits) that a host without systemd does not want.
readonly RUNTIME_PKGS=(
  podman runc conmon catatonit uidmap slirp4netns fuse-overlayfs netavark aardvark-dns
  iproute2 ethtool iptables nftables util-linux procps kmod
  openvswitch-switch openvswitch-common
  iperf3 memcached mosquitto mosquitto-clients redis-server redis-tools
  sqlite3 libsqlite3-dev python3 busybox-static xz-utils ca-certificates
)
# What a plain `make criu` of CRIU 4.2 needs on bookworm (all from bookworm itself).
readonly CRIU_BUILD_DEPS=(
  build-essential pkg-config dpkg-dev xz-utils python3 python3-protobuf
  protobuf-c-compiler libprotobuf-c-dev libprotobuf-dev protobuf-compiler
  libnl-3-dev libnet1-dev libcap-dev libbsd-dev libgnutls28-dev libnftables-dev uuid-dev
)

# ---------------------------------------------------------------------------- output helpers
T0_US=${EPOCHREALTIME//[.,]/}
now_us() { echo "${EPOCHREALTIME//[.,]/}"; }
# fmt_s START_US [END_US] -> seconds with one decimal
fmt_s() {
  local d=$(( ${2:-$(now_us)} - $1 ))
  printf '%d.%01d' $((d / 1000000)) $(((d % 1000000) / 100000))
}
log() { printf '[setup-host %6ss] %s\n' "$(fmt_s "$T0_US")" "$*"; }
section() { printf '\n== %s\n' "$*"; }
warn() { printf '[setup-host] WARNING: %s\n' "$*" >&2; }
die() {
  printf '\n[setup-host] FATAL: %s\n' "$*" >&2
  printf '[setup-host] the host is NOT usable for MOSE-RS (see the messages above)\n' >&2
  exit 1
}

INSTALLED=()   # packages installed by this run
CHANGED=()     # files written by this run
FOUND=()       # what was already there
TIMINGS=()     # "step: seconds" lines for the summary

# ---------------------------------------------------------------------------- cleanup (trap)
CLEAN_CONTAINERS=() CLEAN_IMAGES=() CLEAN_PIDS=() CLEAN_NETNS=() CLEAN_DIRS=()
POLICY_RC_CREATED=0

# Kill a process we started, by pid, only if it still runs the program we expect
# (guards against pid reuse).
kill_ours() {
  local pid=$1 pattern=$2 i
  [[ -r /proc/$pid/cmdline ]] || return 0
  grep -qa -- "$pattern" "/proc/$pid/cmdline" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for i in 1 2 3 4 5 6 7 8 9 10; do [[ -d /proc/$pid ]] || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$? x
  set +e
  for x in "${CLEAN_CONTAINERS[@]}"; do podman rm -f -t 0 "$x" >/dev/null 2>&1; done
  for x in "${CLEAN_IMAGES[@]}"; do podman rmi -f "$x" >/dev/null 2>&1; done
  for x in "${CLEAN_PIDS[@]}"; do kill_ours "${x%%:*}" "${x#*:}"; done
  for x in "${CLEAN_NETNS[@]}"; do ip netns del "$x" >/dev/null 2>&1; done
  for x in "${CLEAN_DIRS[@]}"; do rm -rf -- "$x"; done
  if ((POLICY_RC_CREATED)); then rm -f /usr/sbin/policy-rc.d; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# new_tmpdir VAR : a temp dir removed on exit (not via $(...): the subshell would lose CLEAN_DIRS).
new_tmpdir() {
  local -n _out=$1
  _out=$(mktemp -d /tmp/mose-setup.XXXXXX)
  CLEAN_DIRS+=("$_out")
}
new_netns() {
  local ns=$1
  ip netns add "$ns"
  CLEAN_NETNS+=("$ns")
  ip -n "$ns" link set lo up
}
del_netns() { ip netns del "$1" 2>/dev/null || true; }

# ---------------------------------------------------------------------------- apt helpers
pkg_installed() { [[ $(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null) == "ii " ]]; }
pkg_version() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null; }

APT_UPDATED=0
apt_update_once() {
  ((APT_UPDATED)) && return 0
  local t; t=$(now_us)
  mkdir -p "$LOG_DIR"
  log "apt-get update"
  "${APT[@]}" update >"$LOG_DIR/apt-update.log" 2>&1 \
    || { tail -20 "$LOG_DIR/apt-update.log" >&2; die "apt-get update failed"; }
  APT_UPDATED=1
  TIMINGS+=("apt-get update: $(fmt_s "$t") s")
}

# Prevent package maintainer scripts from starting daemons (ovsdb-server, ovs-vswitchd,
# memcached, mosquitto, redis): MOSE starts its own instances per emulated host. policy-rc.d is
# honoured by invoke-rc.d and deb-systemd-invoke alike. An existing policy is left alone.
guard_service_starts() {
  [[ -e /usr/sbin/policy-rc.d ]] && return 0
  printf '#!/bin/sh\n# temporary, from MOSE-RS testbed/setup-host.sh: start no services\nexit 101\n' \
    >/usr/sbin/policy-rc.d
  chmod 755 /usr/sbin/policy-rc.d
  POLICY_RC_CREATED=1
}

# apt_install [apt options...] -- pkg...   (installs; records what was new)
apt_install() {
  local opts=() pkgs=() p t
  while [[ $1 != -- ]]; do opts+=("$1"); shift; done
  shift
  pkgs=("$@")
  apt_update_once
  guard_service_starts
  t=$(now_us)
  log "apt-get install ${opts[*]} ${pkgs[*]}"
  if ! "${APT[@]}" install --no-install-recommends "${opts[@]}" "${pkgs[@]}" \
      >"$LOG_DIR/apt-install.log" 2>&1; then
    tail -30 "$LOG_DIR/apt-install.log" >&2
    die "apt-get install ${pkgs[*]} failed (log: $LOG_DIR/apt-install.log)"
  fi
  for p in "${pkgs[@]}"; do INSTALLED+=("${p%%/*}=$(pkg_version "${p%%/*}")"); done
  log "  $(grep -m1 'newly installed' "$LOG_DIR/apt-install.log" || echo 'done')"
  TIMINGS+=("apt-get install ${pkgs[*]:0:3}... (${#pkgs[@]} requested): $(fmt_s "$t") s")
  hash -r
}

# install_missing LABEL pkg... : installs only the packages that are not installed yet, so a
# second run never touches apt (and never upgrades what is already there).
install_missing() {
  local label=$1 missing=() p
  shift
  for p in "$@"; do pkg_installed "$p" || missing+=("$p"); done
  if ((${#missing[@]} == 0)); then
    log "$label: all $# packages present - nothing to do"
    return 0
  fi
  log "$label: missing ${missing[*]}"
  apt_install -- "${missing[@]}"
}

# write_if_changed PATH CONTENT : writes only when the content differs (idempotence).
write_if_changed() {
  local path=$1 content=$2
  if [[ -f $path ]] && [[ $(<"$path") == "${content%$'\n'}" ]]; then
    log "$path unchanged - nothing to do"
    return 1
  fi
  mkdir -p "$(dirname "$path")"
  printf '%s' "$content" >"$path.mose-tmp"
  mv -f "$path.mose-tmp" "$path"
  CHANGED+=("$path")
  log "wrote $path"
  return 0
}

# ---------------------------------------------------------------------------- preflight
preflight() {
  section "preflight"
  [[ $EUID -eq 0 ]] || die "must run as root (installs packages, creates network namespaces)"
  [[ -f $TCP_PROBE_PY ]] || die "missing helper $TCP_PROBE_PY"
  # Two runs at once would fight over the probe image name and apt: serialise them.
  exec {LOCK_FD}>/run/lock/mose-setup-host.lock
  flock -w 900 "$LOCK_FD" || die "another setup-host.sh run holds /run/lock/mose-setup-host.lock"
  # apt/build logs are kept here, written only when apt or a build actually runs.
  LOG_DIR="$CACHE_DIR/logs"
  local codename=unknown
  [[ -r /etc/os-release ]] && codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-unknown}")
  [[ $codename == bookworm ]] || warn "written for Debian 12 (bookworm), this is '$codename'"
  log "host: Debian $(cat /etc/debian_version 2>/dev/null) ($codename), kernel $(uname -r), $(nproc) cores," \
      "PID 1 = $(cat /proc/1/comm)"
  [[ $(cat /proc/1/comm) == systemd ]] || log "no systemd: services are never enabled/started by this script"
  FOUND+=("kernel $(uname -r)")
}

# ---------------------------------------------------------------------------- packages
install_packages() {
  section "packages"
  local p present=()
  for p in podman runc conmon openvswitch-switch iperf3 memcached mosquitto redis-server python3; do
    pkg_installed "$p" && present+=("$p=$(pkg_version "$p")")
  done
  ((${#present[@]})) && log "already installed: ${present[*]}"
  FOUND+=("${present[@]}")
  OVS_WAS_INSTALLED=0
  pkg_installed openvswitch-switch && OVS_WAS_INSTALLED=1
  install_missing "runtime packages" "${RUNTIME_PKGS[@]}"
}

# Installing openvswitch-switch may start the system ovsdb-server/ovs-vswitchd (fresh Debian
# without a policy-rc.d). MOSE runs its own per emulated host, so a system instance must not
# run. Only the instance of the host mount namespace with the packaged pidfiles counts: daemons
# of emulated hosts live in their own mount namespaces.
system_ovs_pids() {
  local name pid
  for name in ovsdb-server ovs-vswitchd; do
    [[ -r /run/openvswitch/$name.pid ]] || continue
    pid=$(<"/run/openvswitch/$name.pid")
    [[ -n $pid && -r /proc/$pid/comm && $(<"/proc/$pid/comm") == "$name" ]] || continue
    [[ $(readlink "/proc/$pid/ns/mnt") == $(readlink /proc/self/ns/mnt) ]] || continue
    echo "$pid"
  done
}

check_ovs_services() {
  section "Open vSwitch system services"
  local pids
  pids=$(system_ovs_pids | tr '\n' ' ')
  if [[ -z ${pids// /} ]]; then
    log "no system ovsdb-server/ovs-vswitchd running - nothing to do"
  elif ((OVS_WAS_INSTALLED == 0)); then
    # This run installed the package, so this run started them: stop them.
    log "stopping the system OvS daemons the package install started (pids $pids)"
    /usr/share/openvswitch/scripts/ovs-ctl stop >/dev/null 2>&1 || true
    [[ -z $(system_ovs_pids) ]] || die "could not stop the system ovsdb-server/ovs-vswitchd ($pids)"
  else
    # Started by someone else: report, do not kill what this script did not start.
    warn "a system ovsdb-server/ovs-vswitchd runs (pids $pids), not started by this run;" \
         "stop it with '/usr/share/openvswitch/scripts/ovs-ctl stop' if nobody needs it"
  fi
}

# ---------------------------------------------------------------------------- podman runtime
configure_podman() {
  section "podman runtime"
  # Checkpoint/restore needs runc: Debian's crun 1.8 has no checkpoint support. A drop-in
  # (read by podman 4.3, also by `podman system service`) keeps the packaged files untouched.
  # network_backend: Debian's podman ships a CNI bridge config but (without Recommends) no
  # CNI plugins, so the CNI backend only warns on every command; netavark is installed, and
  # MOSE attaches containers to netns of its own (--network ns:...) anyway.
  write_if_changed "$PODMAN_DROPIN" '# Written by MOSE-RS testbed/setup-host.sh.
# Checkpoint/restore (CRIU) needs runc: Debian 12 crun 1.8 cannot checkpoint.
[engine]
runtime = "runc"

[network]
network_backend = "netavark"
' || true
  local rt
  # No pipe into `head`: with pipefail a SIGPIPE of podman would look like a failure.
  rt=$(podman info --format '{{.Host.OCIRuntime.Name}} {{.Host.OCIRuntime.Path}}, network backend {{.Host.NetworkBackend}}' 2>&1) \
    || die "podman info failed: $rt"
  [[ $rt != *level=warning* ]] || die "podman info warns: $rt"
  log "podman info: runtime $rt"
  [[ $rt == runc* ]] || die "podman does not use runc (got: $rt)"
  FOUND+=("podman $(podman --version | awk '{print $3}'), runc $(runc --version | awk 'NR==1{print $3}')")
}

# ---------------------------------------------------------------------------- CRIU probes
CRIU_PROBE_RESULT=""   # human readable result of the last TCP probe

# criu_tcp_probe BIN : dump + restore (--tcp-established) of a process tree holding an
# ESTABLISHED TCP connection on 127.0.0.1 inside a throwaway netns; the restored tree must keep
# using the same connection. Criu runs in the same netns (nsenter --net only, no new mount
# namespace) so it neither dumps nor recreates the namespace.
criu_tcp_probe() {
  local bin=$1 ns="mose-criu-probe-$$" dir launcher pids spid cpid p0 p1 i t rpid rc
  new_tmpdir dir
  mkdir -p "$dir/img"
  new_netns "$ns"
  # {LOCK_FD}>&-: the probe must not inherit our flock'ed lock file, or criu refuses to dump
  # ("Some file locks are hold by dumping tasks").
  setsid nsenter --net="/run/netns/$ns" -- "$SYS_PY" -I -S "$TCP_PROBE_PY" "$dir" \
    </dev/null >"$dir/probe.out" 2>&1 {LOCK_FD}>&- &
  launcher=$!
  # criu kills the dumped tree on purpose; a disowned job is reaped without bash's "Killed" notice.
  disown "$launcher"
  for i in $(seq 100); do [[ -s $dir/pids && -s $dir/progress ]] && break; sleep 0.05; done
  if [[ ! -s $dir/pids ]]; then
    CRIU_PROBE_RESULT="FAILED: probe workload did not start ($(cat "$dir/probe.out" "$dir/error" 2>/dev/null))"
    del_netns "$ns"; return 1
  fi
  read -r spid cpid <"$dir/pids"
  CLEAN_PIDS+=("$cpid:criu_tcp_probe" "$spid:criu_tcp_probe")
  sleep 0.3
  t=$(now_us)
  if ! timeout 60 nsenter --net="/run/netns/$ns" -- "$bin" dump -t "$spid" -D "$dir/img" \
        --tcp-established --shell-job -o dump.log -v4 >/dev/null 2>&1; then
    CRIU_PROBE_RESULT="FAILED at dump: $(grep -m3 -E 'Error|error' "$dir/img/dump.log" 2>/dev/null | tr '\n' ' ')"
    kill_ours "$cpid" criu_tcp_probe; kill_ours "$spid" criu_tcp_probe
    del_netns "$ns"; return 1
  fi
  local dump_s; dump_s=$(fmt_s "$t")
  # Wait until both are reaped (the server by us, the orphaned client by PID 1). Until its zombie
  # is reaped (seconds, on hosts whose init reaps lazily) the client still holds the server's pid
  # as its process group and session id, and restoring the server under that pid fails with
  # "Can't fork ...: File exists".
  for i in $(seq 300); do [[ -e /proc/$cpid || -e /proc/$spid ]] || break; sleep 0.05; done
  p0=$(<"$dir/progress")
  t=$(now_us)
  # Not detached: criu stays the parent of the restored tree and exits when it ends, so
  # nothing is left orphaned.
  nsenter --net="/run/netns/$ns" -- "$bin" restore -D "$dir/img" --tcp-established --shell-job \
    -o restore.log -v4 </dev/null >/dev/null 2>&1 &
  rpid=$!
  CLEAN_PIDS=("$rpid:restore" "${CLEAN_PIDS[@]}")
  p1=$p0
  for i in $(seq 100); do
    [[ -e $dir/error ]] && break
    p1=$(<"$dir/progress")
    ((p1 >= p0 + 10)) && break
    kill -0 "$rpid" 2>/dev/null || break
    sleep 0.05
  done
  local restore_s; restore_s=$(fmt_s "$t")
  if [[ -e $dir/error ]] || ((p1 < p0 + 10)); then
    CRIU_PROBE_RESULT="FAILED after restore: counter $p0 -> $p1; $(cat "$dir/error" 2>/dev/null) $(grep -m3 -E 'Error' "$dir/img/restore.log" 2>/dev/null | tr '\n' ' ')"
    kill_ours "$cpid" criu_tcp_probe; kill_ours "$spid" criu_tcp_probe
    wait "$rpid" 2>/dev/null || true
    del_netns "$ns"; return 1
  fi
  # End the restored tree: the client first, the server then sees EOF, reaps it and exits,
  # and criu restore exits with it.
  kill_ours "$cpid" criu_tcp_probe
  for i in $(seq 40); do kill -0 "$rpid" 2>/dev/null || break; sleep 0.05; done
  kill_ours "$spid" criu_tcp_probe
  wait "$rpid" 2>/dev/null || true
  del_netns "$ns"
  CRIU_PROBE_RESULT="OK: same TCP connection continued after dump+restore (counter $p0 at dump -> $p1), dump ${dump_s}s, restore+10 round trips ${restore_s}s"
  return 0
}

# criu_usable BIN : `criu check` passes and the TCP probe passes. Results are remembered so a
# binary is only probed once per run.
declare -A CRIU_VERDICT=()
criu_usable() {
  local bin=$1 out ver
  [[ -n ${CRIU_VERDICT[$bin]:-} ]] && { [[ ${CRIU_VERDICT[$bin]} == ok ]]; return; }
  ver=$("$bin" --version 2>&1 | awk '/^Version/{print $2}') || true
  log "probing $bin (version ${ver:-unknown})"
  if ! out=$("$bin" check 2>&1); then
    log "  criu check FAILED: $(grep -m2 -E 'Error|error' <<<"$out" | tr '\n' ' ')"
    CRIU_VERDICT[$bin]=bad
    return 1
  fi
  log "  criu check: $(tail -1 <<<"$out")"
  if ! criu_tcp_probe "$bin"; then
    log "  TCP dump/restore probe $CRIU_PROBE_RESULT"
    CRIU_VERDICT[$bin]=bad
    return 1
  fi
  log "  TCP dump/restore probe $CRIU_PROBE_RESULT"
  case $ver in [0-2].*|"") log "  version $ver is too old for runc (needs >= 3)"; CRIU_VERDICT[$bin]=bad; return 1;; esac
  CRIU_VERDICT[$bin]=ok
}

# ---------------------------------------------------------------------------- CRIU routes
ensure_sid_source() {
  # Pin first, so there is never a moment where sid is in sources.list.d unpinned. Priority 100:
  # nothing comes from sid unless asked for with -t sid / pkg/sid, and libc6 is never upgraded.
  local changed=0
  write_if_changed "$SID_PIN" '# Written by MOSE-RS testbed/setup-host.sh: take nothing from sid implicitly
# (it would upgrade libc6); only explicit -t sid / pkg/sid requests may use it.
Package: *
Pin: release n=sid
Pin-Priority: 100
' && changed=1
  write_if_changed "$SID_SOURCES" '# Written by MOSE-RS testbed/setup-host.sh: Debian sid carries CRIU >= 4.2 (needed on kernels
# >= 6.16, criu#2718). Pinned to 100 in /etc/apt/preferences.d/mose-sid.
Types: deb deb-src
URIs: http://deb.debian.org/debian
Suites: sid
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
' && changed=1
  if ((changed)) || ! grep -q 'sid/main' <<<"$(apt-cache policy criu 2>/dev/null)"; then
    APT_UPDATED=0
    apt_update_once
  fi
}

# The sid binary is acceptable only when installing it replaces nothing and leaves libc alone.
sid_binary_safe() {
  local sim
  sim=$("${APT[@]}" -s install --no-install-recommends -t sid criu 2>&1) || { log "  simulation failed"; return 1; }
  local libc; libc=$(awk '$1=="Inst" && ($2=="libc6" || $2=="libc-bin") {print $2, $4}' <<<"$sim" | head -1)
  local n_inst; n_inst=$(grep -c '^Inst' <<<"$sim" || true)
  if [[ -n $libc ]]; then
    log "  apt-get -s install -t sid criu: $n_inst packages, including $libc) -> REJECTED (never upgrade libc)"
    return 1
  fi
  if grep -q '^Remv' <<<"$sim"; then
    log "  apt-get -s install -t sid criu would remove packages -> REJECTED"
    return 1
  fi
  log "  apt-get -s install -t sid criu: $n_inst packages, libc untouched -> acceptable"
}

# Newest cached staging tree that holds a criu binary ("" if none).
cached_criu_stage() {
  local d best=""
  for d in "$CRIU_CACHE"/*/stage; do
    [[ -x $d$CRIU_PREFIX/sbin/criu ]] && best=$d
  done
  echo "$best"
}

# Copy a staging tree into / file by file (directories keep their owners and modes) and keep a
# manifest for uninstalling. Files already identical are not rewritten.
install_stage() {
  local stage=$1 f dst manifest n=0
  manifest="$(dirname "$stage")/manifest"
  : >"$manifest.tmp"
  while IFS= read -r -d '' f; do
    dst=${f#"$stage"}
    echo "$dst" >>"$manifest.tmp"
    cmp -s "$f" "$dst" 2>/dev/null && continue
    install -D -m "$(stat -c %a "$f")" "$f" "$dst"
    CHANGED+=("$dst"); n=$((n + 1))
  done < <(find "$stage" -type f -print0)
  mv -f "$manifest.tmp" "$manifest"
  log "installed $n files from $stage (manifest: $manifest)"
  hash -r
}

# Build CRIU from Debian sid's source package with bookworm's toolchain and libraries:
# plain `make criu` + `make install-criu PREFIX=/usr/local` into a staging dir (the binary is
# all runc/podman need: no libcriu, crit or docs).
build_criu_from_sid_source() {
  local t_all t dl dsc ver up orig src stage
  t_all=$(now_us)
  install_missing "CRIU build dependencies (bookworm)" "${CRIU_BUILD_DEPS[@]}"
  dl="$CRIU_CACHE/download"
  mkdir -p "$dl" "$LOG_DIR"
  t=$(now_us)
  # apt verifies what it downloads against the signed Sources index. It may fail on the
  # debian.tar.xz (not needed for a plain make); the orig tarball is checked again below.
  (cd "$dl" && "${APT[@]}" source --download-only criu/sid >"$LOG_DIR/apt-source.log" 2>&1) || true
  # shellcheck disable=SC2012 # plain Debian file names
  dsc=$(ls -t "$dl"/criu_*.dsc 2>/dev/null | head -1)
  [[ -n $dsc ]] || { cat "$LOG_DIR/apt-source.log" >&2; die "could not download the criu source package from sid"; }
  ver=$(basename "$dsc" .dsc); ver=${ver#criu_}; up=${ver%-*}; up=${up#*:}
  # shellcheck disable=SC2012
  orig=$(ls "$dl"/criu_"$up".orig.tar.* 2>/dev/null | head -1)
  [[ -n $orig ]] || { cat "$LOG_DIR/apt-source.log" >&2; die "criu_$up.orig.tar.* not downloaded"; }
  local want; want=$(awk -v f="$(basename "$orig")" '/^Checksums-Sha256:/{s=1;next} /^[^ ]/{s=0} s && $3==f {print $1}' "$dsc")
  [[ -n $want && $(sha256sum "$orig" | awk '{print $1}') == "$want" ]] \
    || die "checksum mismatch for $orig (expected $want from $dsc)"
  log "sid source: criu $ver, $(basename "$orig") sha256 OK (download $(fmt_s "$t") s)"
  TIMINGS+=("criu source download: $(fmt_s "$t") s")

  src="$CRIU_CACHE/$up/build"
  stage="$CRIU_CACHE/$up/stage"
  rm -rf "$src" "$stage"
  mkdir -p "$src"
  tar -C "$src" -xf "$orig"
  src=$(echo "$src"/criu-*)
  t=$(now_us)
  log "building criu $up with $(nproc) jobs (log: $CRIU_CACHE/$up/build.log) ..."
  if ! make -C "$src" -j"$(nproc)" PYTHON="$SYS_PY" criu >"$CRIU_CACHE/$up/build.log" 2>&1; then
    tail -30 "$CRIU_CACHE/$up/build.log" >&2
    die "building criu $up failed (log: $CRIU_CACHE/$up/build.log)"
  fi
  make -C "$src" PYTHON="$SYS_PY" PREFIX="$CRIU_PREFIX" DESTDIR="$stage" install-criu \
    >>"$CRIU_CACHE/$up/build.log" 2>&1 || die "make install-criu failed (log: $CRIU_CACHE/$up/build.log)"
  local build_s; build_s=$(fmt_s "$t")
  log "built criu $up in $build_s s"
  TIMINGS+=("criu make (-j$(nproc)): $build_s s" "criu source route total (deps+download+build): $(fmt_s "$t_all") s")
  printf 'version=%s\nsource=debian sid criu %s\nbuilt=%s\nbuild_seconds=%s\nkernel=%s\n' \
    "$up" "$ver" "$(date -u +%FT%TZ)" "$build_s" "$(uname -r)" >"$CRIU_CACHE/$up/BUILD-INFO"
  install_stage "$stage"
}

CRIU_ROUTE=""
select_criu() {
  section "CRIU"
  local cur bin stage
  cur=$(command -v criu || true)
  # 1. Whatever is on PATH (a previous run's build, Debian's package, an admin's install).
  if [[ -n $cur ]]; then
    if criu_usable "$cur"; then
      CRIU_BIN=$cur; CRIU_ROUTE="already present and working ($cur) - nothing to do"
      return 0
    fi
  else
    log "no criu on PATH"
  fi
  # 2. Debian's own package (bookworm: 3.17; fine on older kernels, fails on this one).
  if ! pkg_installed criu; then
    apt_install -- criu
  fi
  if [[ -x /usr/sbin/criu ]] && criu_usable /usr/sbin/criu; then
    CRIU_BIN=/usr/sbin/criu; CRIU_ROUTE="Debian package criu $(pkg_version criu)"
    return 0
  fi
  # 3. A build cached by an earlier run (e.g. /usr/local was cleaned): reinstall, no rebuild.
  stage=$(cached_criu_stage)
  if [[ -n $stage ]]; then
    log "reinstalling cached build from $stage"
    install_stage "$stage"
    if criu_usable "$CRIU_PREFIX/sbin/criu"; then
      CRIU_BIN=$CRIU_PREFIX/sbin/criu; CRIU_ROUTE="cached source build ($stage)"
      return 0
    fi
  fi
  # 4. Debian sid's binary package, only if it does not drag in a newer libc.
  ensure_sid_source
  log "sid offers criu $(apt-cache policy criu | awk '/ 100 .*sid\/main/{print prev} {prev=$1}' | head -1)"
  if sid_binary_safe; then
    apt_install -t sid -- criu
    if criu_usable /usr/sbin/criu; then
      CRIU_BIN=/usr/sbin/criu; CRIU_ROUTE="Debian sid binary package criu $(pkg_version criu)"
      return 0
    fi
  fi
  # 5. Debian sid's source package, built here against bookworm's libraries.
  build_criu_from_sid_source
  CRIU_VERDICT=()
  if criu_usable "$CRIU_PREFIX/sbin/criu"; then
    CRIU_BIN=$CRIU_PREFIX/sbin/criu
    CRIU_ROUTE="built from Debian sid source package into $CRIU_PREFIX (distro and sid binary rejected)"
    return 0
  fi
  die "no working CRIU: Debian's package, sid's binary and a source build all failed the checks above"
}

report_criu() {
  section "CRIU report"
  hash -r
  local onpath; onpath=$(command -v criu || true)
  # podman and runc find criu through PATH: the selected binary must be the one PATH finds.
  [[ $onpath == "$CRIU_BIN" ]] || die "criu on PATH is '$onpath' but the working one is $CRIU_BIN" \
    "(is $CRIU_PREFIX/sbin on PATH, before /usr/sbin?)"
  log "route: $CRIU_ROUTE"
  echo "--- criu --version ($CRIU_BIN)"
  criu --version
  echo "--- criu check"
  criu check 2>&1 || die "criu check fails"
  echo "--- criu check --feature mem_dirty_track (soft-dirty; needed only for pre-copy)"
  local out
  if out=$(criu check --feature mem_dirty_track 2>&1); then
    echo "$out"; DIRTY_TRACKING=true
  else
    echo "$out"; DIRTY_TRACKING=false
    echo "(expected on this kernel: no soft-dirty tracking -> pre-copy strategies unavailable; not an error)"
  fi
  echo "--- TCP dump/restore probe: $CRIU_PROBE_RESULT"
  FOUND+=("criu $(criu --version | awk '/^Version/{print $2}') at $CRIU_BIN")
}

# ---------------------------------------------------------------------------- network checks
# netns + veth + `ethtool -K tx off` + an OvS userspace (netdev) bridge with its own private
# ovsdb-server/ovs-vswitchd, exactly the pieces an emulated host uses. Everything lives in a
# throwaway netns and a temp dir; the daemons are ours and stopped at the end.
verify_network() {
  section "network stack (netns, veth, ethtool, OvS userspace datapath)"
  local ns="mose-net-probe-$$" d run t
  t=$(now_us)
  [[ -c /dev/net/tun ]] || die "/dev/net/tun missing (OvS userspace bridges need tap devices)"
  new_netns "$ns"
  ip -n "$ns" link add mose-pa type veth peer name mose-pb
  ip -n "$ns" link set mose-pa up
  ip -n "$ns" link set mose-pb up
  nsenter --net="/run/netns/$ns" -- ethtool -K mose-pa tx off >/dev/null 2>&1 \
    || die "ethtool -K <veth> tx off failed"
  grep -q 'tx-checksumming: off' <<<"$(nsenter --net="/run/netns/$ns" -- ethtool -k mose-pa)" \
    || die "ethtool did not turn tx checksumming off on a veth"
  log "netns + veth + ethtool -K tx off: OK"

  new_tmpdir d; run="$d/ovs"; mkdir -p "$run"
  export OVS_RUNDIR=$run OVS_LOGDIR=$run OVS_DBDIR=$run
  local db="unix:$run/db.sock"
  ovsdb-tool create "$run/conf.db" /usr/share/openvswitch/vswitch.ovsschema
  nsenter --net="/run/netns/$ns" -- ovsdb-server "$run/conf.db" --remote="punix:$run/db.sock" \
    --pidfile="$run/ovsdb-server.pid" --unixctl="$run/ovsdb-server.ctl" --detach \
    -vconsole:off --log-file="$run/ovsdb-server.log" || die "ovsdb-server did not start (see $run)"
  CLEAN_PIDS+=("$(<"$run/ovsdb-server.pid"):ovsdb-server")
  ovs-vsctl --db="$db" --no-wait init
  nsenter --net="/run/netns/$ns" -- ovs-vswitchd "$db" --pidfile="$run/ovs-vswitchd.pid" \
    --unixctl="$run/ovs-vswitchd.ctl" --detach -vconsole:off --log-file="$run/ovs-vswitchd.log" \
    || die "ovs-vswitchd did not start (see $run/ovs-vswitchd.log)"
  CLEAN_PIDS=("$(<"$run/ovs-vswitchd.pid"):ovs-vswitchd" "${CLEAN_PIDS[@]}")
  ovs-vsctl --db="$db" --timeout=20 add-br mose-pbr -- set bridge mose-pbr datapath_type=netdev \
    -- add-port mose-pbr mose-pb || die "could not create an OvS netdev bridge"
  ovs-ofctl -O OpenFlow13 add-flow "unix:$run/mose-pbr.mgmt" 'priority=10,arp,actions=NORMAL' \
    || die "ovs-ofctl add-flow failed"
  local flows; flows=$(ovs-ofctl -O OpenFlow13 dump-flows "unix:$run/mose-pbr.mgmt")
  grep -q 'priority=10,arp' <<<"$flows" || die "OpenFlow flow not installed: $flows"
  log "OvS $(ovs-vswitchd --version | awk 'NR==1{print $4}') userspace bridge (datapath_type=netdev) + veth port + OpenFlow13 flow: OK"
  ovs-appctl -t "$run/ovs-vswitchd.ctl" exit >/dev/null 2>&1 || true
  ovs-appctl -t "$run/ovsdb-server.ctl" exit >/dev/null 2>&1 || true
  unset OVS_RUNDIR OVS_LOGDIR OVS_DBDIR
  del_netns "$ns"
  TIMINGS+=("network/OvS check: $(fmt_s "$t") s")
}

verify_tools() {
  section "workload tools"
  local v=()
  # `|| true` inside: some of these print their version with a non-zero exit (mosquitto -h).
  v+=("iperf3 $({ iperf3 --version || true; } | awk 'NR==1{print $2}')")
  v+=("memcached $({ memcached -V 2>&1 || true; } | awk '{print $2}')")
  v+=("mosquitto $({ mosquitto -h 2>&1 || true; } | awk '/version/{print $3; exit}')")
  v+=("redis $({ redis-server --version || true; } | awk '{print $3}')")
  v+=("sqlite3 $({ sqlite3 --version || true; } | awk '{print $1}')")
  v+=("python3 $("$SYS_PY" -c 'import platform; print(platform.python_version())')")
  v+=("iproute2 $({ ip -V || true; } | awk '{print $NF}')")
  v+=("busybox $({ busybox || true; } | awk 'NR==1{print $2}')")
  local x
  for x in iperf3 memcached mosquitto redis-server redis-cli sqlite3 busybox; do
    command -v "$x" >/dev/null || die "$x is not installed"
  done
  log "${v[*]}"
  FOUND+=("${v[@]}")
}

# ---------------------------------------------------------------------------- podman probe
# End to end: import a tiny busybox rootfs, run it with runc and the ulimits this host needs, in
# a netns we made; the container holds a LISTEN socket (httpd) and an ESTABLISHED connection
# (a counter through an nc echo server). checkpoint --export + rm + restore --import, both with
# --tcp-established; then the same connection must keep counting and httpd must answer.
verify_podman_checkpoint() {
  section "podman checkpoint/restore round trip"
  local t ns="mose-probe-$$" ctr="mose-probe-$$" d hard n0 n1 i body
  t=$(now_us)
  new_tmpdir d
  mkdir -p "$d/rootfs/bin" "$d/rootfs/www" "$d/rootfs/tmp" "$d/rootfs/proc" "$d/rootfs/sys" \
           "$d/rootfs/dev" "$d/rootfs/etc"
  cp /bin/busybox "$d/rootfs/bin/busybox"
  for i in sh nc cat sleep httpd wget tail echo; do ln -s busybox "$d/rootfs/bin/$i"; done
  echo mose-probe >"$d/rootfs/www/index.html"
  tar -C "$d/rootfs" -cf "$d/rootfs.tar" .
  if podman image exists "$PROBE_IMAGE"; then
    # Only this script makes this tag (runs are serialised by the lock): a leftover of a killed run.
    log "removing a stale $PROBE_IMAGE left by an interrupted run"
    podman rmi -f "$PROBE_IMAGE" >/dev/null
  fi
  CLEAN_IMAGES+=("$PROBE_IMAGE")
  podman import -q "$d/rootfs.tar" "$PROBE_IMAGE" >/dev/null || die "podman import failed"
  new_netns "$ns"
  hard=$(ulimit -Hn)
  CLEAN_CONTAINERS+=("$ctr")
  # The loop is bounded (600 x 0.2 s), so a forgotten container stops by itself.
  # shellcheck disable=SC2016 # the script is expanded by the container's shell
  timeout 60 podman run -d --name "$ctr" --runtime runc --network "ns:/run/netns/$ns" \
    --ulimit "nofile=$hard:$hard" --ulimit nproc=32768:32768 "$PROBE_IMAGE" /bin/sh -c '
      httpd -p 127.0.0.1:8080 -h /www
      nc -l -p 9000 -e cat &
      sleep 0.3
      i=0; while [ $i -lt 600 ]; do i=$((i+1)); echo $i; sleep 0.2; done | nc 127.0.0.1 9000 >/tmp/echo.log
    ' >/dev/null {LOCK_FD}>&- || die "podman run --runtime runc failed"
  probe_counter() { podman exec "$ctr" tail -n1 /tmp/echo.log 2>/dev/null || echo 0; }
  n0=0
  for i in $(seq 50); do n0=$(probe_counter); ((n0 >= 2)) && break; sleep 0.1; done
  ((n0 >= 2)) || die "probe container: echo connection does not work"
  body=$(nsenter --net="/run/netns/$ns" -- timeout 5 busybox wget -q -O- http://127.0.0.1:8080/ 2>&1) || true
  [[ $body == mose-probe ]] || die "probe container: httpd did not answer ($body)"
  log "container running (runc, nofile=$hard:$hard, nproc=32768): httpd answers, echo counter at $n0"

  local tc tr
  tc=$(now_us)
  timeout 120 podman container checkpoint --tcp-established --export "$d/ckpt.tar.gz" "$ctr" >/dev/null \
    || die "podman container checkpoint --tcp-established --export failed"
  tc=$(fmt_s "$tc")
  podman rm "$ctr" >/dev/null
  tr=$(now_us)
  timeout 120 podman container restore --tcp-established --import "$d/ckpt.tar.gz" >/dev/null \
    || die "podman container restore --tcp-established --import failed"
  tr=$(fmt_s "$tr")
  n0=$(probe_counter)
  sleep 0.5
  n1=$(probe_counter)
  ((n1 > n0)) || die "after restore the container's TCP connection does not continue ($n0 -> $n1)"
  body=$(nsenter --net="/run/netns/$ns" -- timeout 5 busybox wget -q -O- http://127.0.0.1:8080/ 2>&1) || true
  [[ $body == mose-probe ]] || die "after restore httpd does not answer ($body)"
  log "checkpoint --export ${tc}s, restore --import ${tr}s ($(du -h "$d/ckpt.tar.gz" | cut -f1) image):" \
      "same TCP connection continues ($n0 -> $n1), LISTEN socket answers: OK"
  podman rm -f -t 0 "$ctr" >/dev/null 2>&1 || true
  podman rmi -f "$PROBE_IMAGE" >/dev/null 2>&1 || true
  del_netns "$ns"
  TIMINGS+=("podman round trip check: $(fmt_s "$t") s")
}

# ---------------------------------------------------------------------------- summary
summary() {
  section "summary"
  local x
  echo "found:"
  for x in "${FOUND[@]}"; do echo "  - $x"; done
  if ((${#INSTALLED[@]})); then
    echo "installed by this run (${#INSTALLED[@]} requested packages + their dependencies):"
    echo "  ${INSTALLED[*]}"
  else
    echo "installed by this run: nothing (all packages present)"
  fi
  if ((${#CHANGED[@]})); then
    echo "files written by this run: ${#CHANGED[@]}"
    for x in "${CHANGED[@]}"; do echo "  - $x"; done
  else
    echo "files written by this run: none"
  fi
  echo "criu: $CRIU_ROUTE"
  echo "dirty tracking (pre-copy): $DIRTY_TRACKING"
  echo "timings:"
  for x in "${TIMINGS[@]}"; do echo "  - $x"; done
  echo "setup-host: OK in $(fmt_s "$T0_US") s"
}

main() {
  preflight
  install_packages
  check_ovs_services
  configure_podman
  select_criu
  report_criu
  verify_tools
  verify_network
  verify_podman_checkpoint
  summary
}

main "$@"
