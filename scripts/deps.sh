#!/bin/sh
# Installs the Debian packages plinth's build, tests and demo need, and
# any named as arguments (the benchmarks' baselines), only those missing.
# Run as root on Debian 12.
set -eu
pkgs="qemu-system-x86 qemu-utils busybox-static squashfs-tools musl-tools kmod e2fsprogs ca-certificates iproute2 git make gcc xz-utils dnsmasq-base tini runc etcd-server skopeo ovmf systemd-boot-efi cryptsetup-bin mtools dosfstools $*"
missing=""
for p in $pkgs; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
	echo "missing packages:$missing; run 'make deps' as root" >&2
	exit 1
fi
echo "installing:$missing"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
