#!/usr/bin/env bash
# Install the Debian packages named on the command line when their programs are missing.
# Package -> program: nginx -> nginx (often in /usr/sbin), curl -> curl, aria2 -> aria2c,
# passwd -> useradd, systemd -> systemd-socket-activate.
set -euo pipefail
missing=()
for pkg in "$@"; do
  prog=$pkg
  [ "$pkg" = aria2 ] && prog=aria2c
  [ "$pkg" = passwd ] && prog=useradd
  [ "$pkg" = systemd ] && prog=systemd-socket-activate
  if ! command -v "$prog" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$prog" ]; then
    missing+=("$pkg")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO=sudo; else
    echo "missing Debian packages: ${missing[*]}; run as root: apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
else
  SUDO=
fi
echo "installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian starts nginx and tinyproxy as services on install; the tests run their own instances.
for svc in nginx tinyproxy; do
  if [[ " ${missing[*]} " == *" $svc "* ]]; then
    ($SUDO systemctl disable --now "$svc" || $SUDO service "$svc" stop) >/dev/null 2>&1 || true
  fi
done
