#!/bin/bash
# Print the Debian mirror the control node's own apt uses (first URI that is not a security archive), so that
# no mirror address has to be written into the repository. Exit 1 when none is configured.
set -euo pipefail
shopt -s nullglob
for f in /etc/apt/sources.list.d/*.sources; do
  uri=$(awk 'tolower($1) == "uris:" { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }' "$f")
  if [ -n "$uri" ]; then echo "$uri"; exit 0; fi
done
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
  [ -r "$f" ] || continue
  uri=$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^(https?|file|ftp):/ && $i !~ /security/) { print $i; exit } }' "$f")
  if [ -n "$uri" ]; then echo "$uri"; exit 0; fi
done
echo "no Debian mirror found in the apt sources of this machine; set quantum_lab_mirror" >&2
exit 1
