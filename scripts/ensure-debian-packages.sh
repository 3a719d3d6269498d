#!/usr/bin/env bash
# Install the Debian packages named on the command line when what they provide is missing.
# Package -> what proves it installed (a program on PATH or in /usr/sbin, else a file):
#   nginx -> nginx, curl -> curl, aria2 -> aria2c, tinyproxy -> tinyproxy,
#   krb5-kdc -> krb5kdc (and kdb5_util), krb5-admin-server -> kadmin.local, krb5-user -> kinit,
#   libkrb5-dev -> krb5-config, python3-dev -> python3-config, apache2 -> apache2,
#   squid -> squid, microsocks -> microsocks, dante-server -> danted, libapache2-mod-auth-gssapi -> mod_auth_gssapi.so,
#   gss-ntlmssp -> gssntlmssp.so (a GSSAPI mechanism, registered in /etc/gss/mech.d),
#   passwd -> useradd, systemd -> systemd-socket-activate.
set -euo pipefail

# The program (or, with a leading /, the file) that shows a package is installed.
probe() {
  case "$1" in
    aria2) echo aria2c ;;
    iproute2) echo ip ;;
    krb5-kdc) echo krb5kdc ;;
    krb5-user) echo kinit ;;
    krb5-admin-server) echo kadmin.local ;;
    libkrb5-dev) echo krb5-config ;;
    python3-dev) echo python3-config ;;
    dante-server) echo danted ;;
    passwd) echo useradd ;;
    systemd) echo systemd-socket-activate ;;
    libapache2-mod-auth-gssapi) echo /usr/lib/apache2/modules/mod_auth_gssapi.so ;;
    gss-ntlmssp) echo "/usr/lib/$(uname -m)-linux-gnu/gssntlmssp/gssntlmssp.so" ;;
    *) echo "$1" ;;
  esac
}

present() {
  local what
  what=$(probe "$1")
  if [[ $what == /* ]]; then
    [ -e "$what" ]
  else
    command -v "$what" >/dev/null 2>&1 || [ -x "/usr/sbin/$what" ]
  fi
}

missing=()
for pkg in "$@"; do
  present "$pkg" || missing+=("$pkg")
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
# krb5-config (from krb5-user) asks for a default realm; the tests write their own krb5.conf.
echo "krb5-config krb5-config/default_realm string OPENBITS.TEST" | $SUDO debconf-set-selections 2>/dev/null || true
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian starts these as services on install; the tests run their own instances.
for pkg in "${missing[@]}"; do
  case "$pkg" in
    nginx | tinyproxy | apache2 | squid) svcs=("$pkg") ;;
    krb5-kdc) svcs=(krb5-kdc) ;;
    krb5-admin-server) svcs=(krb5-admin-server) ;;
    dante-server) svcs=(danted) ;;
    *) svcs=() ;;
  esac
  for svc in "${svcs[@]}"; do
    ($SUDO systemctl disable --now "$svc" || $SUDO service "$svc" stop) >/dev/null 2>&1 || true
  done
done
