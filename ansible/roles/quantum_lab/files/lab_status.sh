#!/bin/bash
# Report, as one JSON object, every trace a lab host can leave on the control node:
# the systemd-nspawn process (from its pid file, checked against its command line), the network namespace and the
# processes inside it, the veth link, mounts below the lab directory, the lab directory itself, whether its root
# filesystem is intact (prepared completely, so it can boot again with its state), its own cgroups, and, in bridge
# mode, the bridge and the interfaces enslaved to it.
# Usage: lab_status.sh NAME NETNS VETH LAB_DIR [BRIDGE]
set -euo pipefail
name=$1 netns=$2 veth=$3 dir=$4 bridge=${5:-}
pidfile=$dir/nspawn.pid

nspawn_pid=null
if [ -r "$pidfile" ]; then
  pid=$(tr -dc '0-9' < "$pidfile")
  if [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] &&
     tr '\0' '\n' < "/proc/$pid/cmdline" | grep -qxF -- "--machine=$name"; then
    nspawn_pid=$pid
  fi
fi

netns=$( [ -e "/run/netns/$netns" ] && echo true || echo false )
netns_pids="[]"
if [ "$netns" = true ]; then
  netns_pids="[$(ip netns pids "$2" 2>/dev/null | paste -sd, -)]"
fi
link=$( ip link show dev "$veth" >/dev/null 2>&1 && echo true || echo false )
mounts=$(findmnt -rn -o TARGET | awk -v d="$dir/" 'index($0, d) == 1 { printf "%s\"%s\"", (n++ ? "," : ""), $0 }')
exists=$( [ -e "$dir" ] && echo true || echo false )
rootfs=$( [ -d "$dir/rootfs/etc" ] && echo true || echo false )
# Intact: the build finished preparing the tree (marker written last) and what a boot needs is still there.
intact=false
if [ -e "$dir/rootfs.complete" ] && [ -x "$dir/rootfs/usr/lib/systemd/systemd" ] && [ -s "$dir/known_hosts" ] &&
   [ -s "$dir/rootfs/etc/ssh/ssh_host_ed25519_key" ] && [ -s "$dir/rootfs/root/.ssh/authorized_keys" ]; then
  intact=true
fi
# The host's own cgroups (see lab_cgroup.sh), in every hierarchy systemd uses.
cgroups=""
if [ -e /sys/fs/cgroup/cgroup.procs ]; then cg_roots=(/sys/fs/cgroup); else cg_roots=(/sys/fs/cgroup/unified /sys/fs/cgroup/systemd); fi
for r in "${cg_roots[@]}"; do
  [ -d "$r/quantum-lab/$name" ] && cgroups="$cgroups${cgroups:+,}\"$r/quantum-lab/$name\""
done
bridge_up=false
ports=""
if [ -n "$bridge" ] && ip link show dev "$bridge" >/dev/null 2>&1; then
  bridge_up=true
  ports=$(ip -o link show master "$bridge" 2>/dev/null | awk -F': ' '{ sub(/@.*/, "", $2); printf "%s\"%s\"", (n++ ? "," : ""), $2 }')
fi

printf '{"nspawn_pid": %s, "netns": %s, "netns_pids": %s, "link": %s, "mounts": [%s], "dir": %s, "rootfs": %s, "intact": %s, "bridge": %s, "bridge_ports": [%s], "cgroups": [%s]}\n' \
  "$nspawn_pid" "$netns" "$netns_pids" "$link" "$mounts" "$exists" "$rootfs" "$intact" "$bridge_up" "$ports" "$cgroups"
