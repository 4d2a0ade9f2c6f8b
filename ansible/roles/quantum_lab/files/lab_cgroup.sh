#!/bin/bash
# The lab host's own cgroup, one per host in every hierarchy systemd uses (cgroup2, or the hybrid layout's unified and
# name=systemd trees). systemd-nspawn --keep-unit puts the container's tree (payload/system.slice/...) below the cgroup
# it starts in: hosts started from one cgroup would share their units' cgroups, so one host's `systemctl stop` would
# wait on, or kill, another host's processes of the same unit.
# Usage: lab_cgroup.sh paths NAME    print the host's cgroup directories (existing or not), one a line
#        lab_cgroup.sh remove NAME   remove them, deepest first (only once no process is left in them)
set -euo pipefail
action=$1 name=$2
if [ -e /sys/fs/cgroup/cgroup.procs ]; then
  roots=(/sys/fs/cgroup)
else
  roots=()
  for r in /sys/fs/cgroup/unified /sys/fs/cgroup/systemd; do [ -e "$r/cgroup.procs" ] && roots+=("$r"); done
fi
case $action in
  paths)
    for r in "${roots[@]}"; do echo "$r/quantum-lab/$name"; done
    ;;
  remove)
    for r in "${roots[@]}"; do
      d=$r/quantum-lab/$name
      [ -d "$d" ] || continue
      # A cgroup that still holds a process stays; lab_status.sh reports it.
      find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
      [ -d "$d" ] || echo "removed $d"
      rmdir "$r/quantum-lab" 2>/dev/null || true  # the common parent goes with the last lab host
    done
    ;;
  *)
    echo "usage: lab_cgroup.sh paths|remove NAME" >&2
    exit 2
    ;;
esac
