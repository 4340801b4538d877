#!/usr/bin/env bash
# Installs what the end-to-end client tests need on a fresh Debian machine, as
# root: kcat (used by other tests), a Python venv with the pinned clients, and
# the pinned kafkajs. Safe to run again: each step is skipped when its result
# is already there and up to date.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

log() { echo "clients/setup: $*"; }

apt_updated=0
# Installs the named Debian packages that are not installed yet.
apt_install() {
  local missing=() pkg
  for pkg in "$@"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
      missing+=("$pkg")
    fi
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=()
  [ "$(id -u)" -ne 0 ] && sudo=(sudo)
  if [ $apt_updated -eq 0 ]; then
    log "apt-get update"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  log "apt-get install ${missing[*]}"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

apt_install kcat

# ---- Python: .venv with requirements.txt, re-installed when the pins change.
python="${PYTHON:-python3}"
command -v "$python" >/dev/null 2>&1 || { apt_install python3 python3-venv; python=python3; }
venv="$here/python/.venv"
requirements="$here/python/requirements.txt"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$requirements" | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
  rm -rf "$venv"
  # Debian's own python3 needs python3-venv (ensurepip) before `-m venv` works.
  probe="$(mktemp -d)"
  if ! "$python" -m venv "$probe/v" >/dev/null 2>&1; then
    apt_install python3-venv
  fi
  rm -rf "$probe"
  log "creating $venv"
  "$python" -m venv "$venv"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "pip install -r requirements.txt"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --only-binary=:all: -r "$requirements"
  echo "$want" >"$stamp"
fi

# ---- Node: npm ci from the committed lock file, again when the lock changes.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  apt_install nodejs npm
fi
node_dir="$here/node"
stamp="$node_dir/node_modules/.package-lock.sha256"
want="$(sha256sum "$node_dir/package-lock.json" | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "npm ci"
  (cd "$node_dir" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$want" >"$stamp"
fi

log "ready"
