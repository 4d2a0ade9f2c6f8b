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
