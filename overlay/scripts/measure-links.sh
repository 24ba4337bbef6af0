#!/bin/bash
# Measure the two ways of joining two hosts' OvS bridges (userspace datapath) that
# docs/overlay.md compares: a veth "wire" vs VXLAN over an underlay veth.
#   sudo overlay/scripts/measure-links.sh wire
#   sudo EPMTU=1450 overlay/scripts/measure-links.sh vxlan   # endpoints leave room for 50 B of VXLAN
#   sudo ULMTU=1550 overlay/scripts/measure-links.sh vxlan   # or the underlay carries it
# Everything it makes is named mov-vx-* and removed at start and end. Needs iperf3 and python3.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
P=mov-vx
cleanup() {
  for h in h1 h2; do
    for d in ovs-vswitchd ovsdb-server; do [ -f /tmp/$P-$h/$d.pid ] && kill $(cat /tmp/$P-$h/$d.pid) 2>/dev/null; done
  done
  sleep 0.5
  for n in h1 h2 c s; do ip netns del $P-$n 2>/dev/null; done
  rm -rf /tmp/$P-h1 /tmp/$P-h2
}
cleanup
for n in h1 h2 c s; do ip netns add $P-$n; ip -n $P-$n link set lo up; done
startovs() { # $1 host
  local d=/tmp/$P-$1; mkdir -p $d
  ovsdb-tool create $d/conf.db /usr/share/openvswitch/vswitch.ovsschema
  OVS_RUNDIR=$d ip netns exec $P-$1 ovsdb-server $d/conf.db --remote=punix:$d/db.sock --pidfile=$d/ovsdb-server.pid --unixctl=$d/ovsdb-server.ctl --log-file=$d/ovsdb-server.log --detach --no-chdir
  ovs-vsctl --db=unix:$d/db.sock --no-wait init
  OVS_RUNDIR=$d ip netns exec $P-$1 ovs-vswitchd unix:$d/db.sock --pidfile=$d/ovs-vswitchd.pid --unixctl=$d/ovs-vswitchd.ctl --log-file=$d/ovs-vswitchd.log --detach --no-chdir
}
vs() { local h=$1; shift; ovs-vsctl --db=unix:/tmp/$P-$h/db.sock "$@"; }
startovs h1; startovs h2
for h in h1 h2; do vs $h add-br br0 -- set bridge br0 datapath_type=netdev; done
# endpoints c (behind h1) and s (behind h2)
ip link add ep-c netns $P-h1 type veth peer name eth0 netns $P-c
ip link add ep-s netns $P-h2 type veth peer name eth0 netns $P-s
ip -n $P-c addr add 10.79.0.1/24 dev eth0; ip -n $P-s addr add 10.79.0.2/24 dev eth0
for n in c s; do ip -n $P-$n link set eth0 up; ip netns exec $P-$n ethtool -K eth0 tx off >/dev/null; done
ip -n $P-h1 link set ep-c up; ip -n $P-h2 link set ep-s up
vs h1 add-port br0 ep-c; vs h2 add-port br0 ep-s

measure() { # $1 label
  ip netns exec $P-s iperf3 -s -1 -D -p 5201 >/dev/null; sleep 0.3
  local bw=$(ip netns exec $P-c iperf3 -c 10.79.0.2 -p 5201 -t 4 -O 1 -J | python3 -c 'import json,sys; d=json.load(sys.stdin); print("%.0f"%(d["end"]["sum_received"]["bits_per_second"]/1e6))')
  (ip netns exec $P-s timeout 20 python3 $HERE/rtt.py srv &) ; sleep 0.5
  local rtt=$(ip netns exec $P-c timeout 20 python3 $HERE/rtt.py cli 10.79.0.2 2>&1 | tail -1)
  echo "$1: iperf3 ${bw} Mbit/s; ping $rtt"
}
if [ "${1:-wire}" = wire ]; then
  ip link add w1 netns $P-h1 type veth peer name w2 netns $P-h2
  ip -n $P-h1 link set w1 up; ip -n $P-h2 link set w2 up
  vs h1 add-port br0 w1; vs h2 add-port br0 w2
  sleep 1; ip netns exec $P-c true
  measure "veth wire"
else
  # underlay: veth ul between h1 and h2, attached to br-phy ("brp"), IP on the brp internal port
  ip link add ul netns $P-h1 mtu ${ULMTU:-1500} type veth peer name ul netns $P-h2 mtu ${ULMTU:-1500}
  i=1
  for h in h1 h2; do
    ip -n $P-$h link set ul up
    vs $h add-br brp -- set bridge brp datapath_type=netdev -- add-port brp ul
    sleep 0.5
    ip -n $P-$h addr add 10.200.0.$i/24 dev brp; ip -n $P-$h link set brp up
    ip netns exec $P-$h ethtool -K brp tx off >/dev/null 2>&1
    i=$((i+1))
  done
  # Without EPMTU/ULMTU full-size frames (1500 + 50 B VXLAN) are dropped: pings work, TCP bulk stalls at 0.
  [ -n "${EPMTU:-}" ] && { ip -n $P-c link set eth0 mtu $EPMTU; ip -n $P-s link set eth0 mtu $EPMTU; }
  vs h1 add-port br0 vx -- set interface vx type=vxlan options:remote_ip=10.200.0.2 options:key=5
  vs h2 add-port br0 vx -- set interface vx type=vxlan options:remote_ip=10.200.0.1 options:key=5
  sleep 1
  # One packet makes the kernel ARP for the peer; OvS learns the tunnel neighbour by snooping the reply.
  ip netns exec $P-h1 python3 -c "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.sendto(b\"x\", (\"10.200.0.2\", 9))"; sleep 0.5
  OVS_RUNDIR=/tmp/$P-h1 ovs-appctl -t /tmp/$P-h1/ovs-vswitchd.ctl tnl/neigh/show
  OVS_RUNDIR=/tmp/$P-h1 ovs-appctl -t /tmp/$P-h1/ovs-vswitchd.ctl ovs/route/show | grep 10.200
  measure "vxlan"
fi
cleanup
