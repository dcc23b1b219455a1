#!/usr/bin/env bash
# Installs the host packages that `make test-image` and `make test-deploy` use, if missing:
# podman with runc (the runtime deploy/podman/containers.conf names), netavark and aardvark-dns
# (rootful networking: the loopback port mappings), catatonit (the pause process of the pods
# `podman kube play` makes) and debootstrap (the base image is made from Debian's archive,
# since no container registry is reachable). Debian/Ubuntu, as root.
#
#   install-host-tools.sh            install what is missing, or fail saying what to install
#   install-host-tools.sh --optional the same, but only warn when it cannot install
set -euo pipefail

PACKAGES=(podman runc conmon netavark aardvark-dns containernetworking-plugins iptables catatonit
          uidmap slirp4netns fuse-overlayfs debootstrap)

optional=0
[[ "${1:-}" == "--optional" ]] && optional=1

missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]} == 0)); then
  exit 0
fi

if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
  message="missing host packages: ${missing[*]} (as root on Debian/Ubuntu: apt-get install --no-install-recommends ${missing[*]})"
  if ((optional)); then
    echo "WARNING: $message" >&2
    exit 0
  fi
  echo "ERROR: $message" >&2
  exit 1
fi

echo "installing host packages: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
