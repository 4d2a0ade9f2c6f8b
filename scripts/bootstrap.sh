#!/usr/bin/env bash
# Install what the control node needs on a fresh Debian 12 machine (as root): system packages and the .venv.
# Idempotent and quick when everything is already there, so every make target can call it.
set -euo pipefail
cd "$(dirname "$0")/.."

# prometheus gives the tests promtool (alert rules); prometheus-redis-exporter lets them run the exporter the
# monitoring role installs, against a private redis-server.
APT_PACKAGES=(redis-server debootstrap systemd-container openssh-client iproute2 tmux python3-venv prometheus
             prometheus-redis-exporter)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Lab hosts have no route out: what the deploy installs on them that their root filesystem lacks is shipped as .deb
# files from here (inventory/lab/group_vars). Downloaded once into a directory of our own (an apt cache may be
# cleaned at any time): logrotate for every host, redis-sentinel for Sentinel hosts, Prometheus + redis_exporter and the dependencies the lab's root
# filesystem lacks for the monitoring host.
LAB_DEBS=/var/cache/quantum-lab/debs
# redis-sentinel must match the redis-tools of the lab's root filesystem, which debootstrap takes from the suite's
# main archive (not from -security): pin the version that archive serves.
sentinel_version=$(apt-cache madison redis-sentinel 2>/dev/null | awk -F'|' '$3 !~ /security|updates/ {gsub(/ /, "", $2); print $2; exit}')
declare -A LAB_DEB_SETS=(
  [logrotate]="logrotate libpopt0"
  [sentinel]="redis-sentinel${sentinel_version:+=$sentinel_version}"
  [monitoring]="prometheus prometheus-redis-exporter fonts-glyphicons-halflings javascript-common libjs-bootstrap
                libjs-bootstrap4 libjs-d3 libjs-eonasdan-bootstrap-datetimepicker libjs-jquery libjs-jquery-hotkeys
                libjs-moment libjs-moment-timezone libjs-mustache libjs-popper.js libjs-rickshaw"
)
for set in "${!LAB_DEB_SETS[@]}"; do
  dir=$LAB_DEBS/$set
  need=()
  for p in ${LAB_DEB_SETS[$set]}; do
    compgen -G "$dir/${p%%=*}_*.deb" >/dev/null || need+=("$p")
  done
  if [ ${#need[@]} -gt 0 ]; then
    echo "bootstrap: downloading ${need[*]} for the lab hosts into $dir"
    mkdir -p "$dir"
    (cd "$dir" && apt-get download -qq "${need[@]}" 2>/dev/null) || { apt-get update -qq && (cd "$dir" && apt-get download -qq "${need[@]}"); }
  fi
done

PY=${PYTHON:-python3}
stamp=.venv/.requirements.sha
want=$(cat requirements.txt requirements-dev.txt | sha256sum | cut -d' ' -f1)
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "bootstrap: installing pinned Python requirements into .venv"
  .venv/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt
  echo "$want" > "$stamp"
fi
