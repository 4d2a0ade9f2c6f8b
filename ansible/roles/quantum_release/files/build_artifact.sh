#!/bin/bash
# Control node: package the release tree and the wheelhouse it needs, print one JSON line describing them.
# Usage: build_artifact.sh PYTHON SRC_DIR BUILD_DIR "PIP_DOWNLOAD_ARGS" PATH...
# The tarball is reproducible (sorted names, fixed mtime/owner/mode), so its sha256 is a content checksum of the
# tree: an unchanged tree gives the same checksum, which is how the deploy knows that no new release is needed.
set -euo pipefail
python=$1 src=$2 build=$3 pip_args=$4
shift 4
cd "$src"
for p in "$@"; do
  [ -e "$p" ] || { echo "release path $src/$p does not exist" >&2; exit 1; }
done
mkdir -p "$build"
tmp=$(mktemp "$build/tree.XXXXXX.tar")
trap 'rm -f "$tmp"' EXIT
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --mode='u+rwX,go+rX,go-w' \
  --exclude=__pycache__ --exclude='*.pyc' --exclude='.pytest_cache' -cf "$tmp" "$@"
sum=$(sha256sum "$tmp" | cut -d' ' -f1)
tarball="$build/tree-$sum.tar"
mv "$tmp" "$tarball"
# Only the newest few trees are worth keeping on the control node.
ls -1t "$build"/tree-*.tar | tail -n +21 | xargs -r rm -f

# The wheelhouse is resolved by PYTHON, which should be the hosts' interpreter version (Debian 12: 3.11.2):
# environment markers such as python_full_version < "3.11.3" are evaluated for the Python that runs pip download.
pyver=$("$python" -c 'import platform; print(platform.python_version())')
req_sum=$(cat requirements.txt - <<<"$pyver $pip_args" | sha256sum | cut -d' ' -f1)
wheelhouse="$build/wheelhouse-$req_sum"
# Several deploys may package at once (the lab tests run in parallel): everything shared is built in a private
# directory and renamed into place complete, so nobody ever reads or deletes a half-built one.
if [ ! -f "$wheelhouse/.complete" ]; then
  staging=$(mktemp -d "$build/wheelhouse.XXXXXX")
  trap 'rm -f "$tmp"; rm -rf "$staging"' EXIT
  pip=("$python" -m pip)
  if ! "$python" -m pip --version >/dev/null 2>&1; then
    # No pip for this interpreter (python3-pip not installed): a throwaway venv brings its own (python3-venv).
    if [ ! -x "$build/pip-venv/bin/pip" ]; then
      venv=$(mktemp -d "$build/pip-venv.XXXXXX")
      "$python" -m venv "$venv" >&2
      # The venv's scripts name their own directory: it is used from where it was made if another won the race.
      mv -T "$venv" "$build/pip-venv" 2>/dev/null || pip=("$venv/bin/python" -m pip)
    fi
    [ "${pip[0]}" = "$python" ] && pip=("$build/pip-venv/bin/python" -m pip)
  fi
  # shellcheck disable=SC2086
  "${pip[@]}" download --quiet --disable-pip-version-check --only-binary=:all: $pip_args \
    -r requirements.txt -d "$staging" >&2
  touch "$staging/.complete"
  if [ -e "$wheelhouse" ] && [ ! -f "$wheelhouse/.complete" ]; then
    rm -rf "$wheelhouse"  # left half-built by an older version of this script
  fi
  mv -T "$staging" "$wheelhouse" 2>/dev/null || true  # another deploy got there first with the same wheels
fi
commit=unknown dirty=0
if commit=$(git -C "$src" rev-parse --short HEAD 2>/dev/null); then
  dirty=$( (git -C "$src" status --porcelain -- "$@" 2>/dev/null || true) | head -c1 | wc -c)
else
  commit=unknown
fi
printf '{"checksum": "%s", "tarball": "%s", "wheelhouse": "%s", "requirements_checksum": "%s", "python": "%s", "commit": "%s", "dirty": %s}\n' \
  "$sum" "$tarball" "$wheelhouse" "$req_sum" "$pyver" "$commit" "$([ "$dirty" -gt 0 ] && echo true || echo false)"
