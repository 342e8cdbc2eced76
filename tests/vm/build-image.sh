#!/bin/bash
# Build the Debian 12 test-VM image for tests/vm/vmhost.py.
#
#   build-image.sh OUTDIR PACKAGE...
#
# OUTDIR gets: disk.img (sparse raw ext4, the root fs), vmlinuz + initrd.img (direct kernel boot),
# id_ed25519[.pub] (root's ssh key), packages.txt (what got installed).
# Needs root (mmdebstrap in root mode, then mke2fs -d keeps the tree's owners).
# Environment: CTR2SVC_DEBIAN_MIRROR (default http://deb.debian.org/debian), CTR2SVC_VM_DISK_SIZE (8G).
#
# vmhost.py keys its cache on this file's content and the package list: any edit here means a rebuild.
set -euo pipefail

# Called back by mmdebstrap as a customize hook, with the chroot mounts in place.
customize() {
	local root=$1 pubkey=$2
	echo ctr2svc-test >"$root/etc/hostname"
	cat >"$root/etc/hosts" <<-'EOF'
		127.0.0.1	localhost
		127.0.1.1	ctr2svc-test
		::1	localhost ip6-localhost ip6-loopback
	EOF
	cat >"$root/etc/fstab" <<-'EOF'
		/dev/vda	/	ext4	rw,errors=remount-ro	0	1
	EOF
	# No DNS: the guest only talks to the host's forwarded ports.
	printf '# no name servers in the ctr2svc test VM\n' >"$root/etc/resolv.conf"

	# root: no password at all, ssh key only.
	chroot "$root" usermod -p '*' root
	install -d -m 0700 "$root/root/.ssh"
	install -m 0600 "$pubkey" "$root/root/.ssh/authorized_keys"
	cat >"$root/etc/ssh/sshd_config.d/ctr2svc-test.conf" <<-'EOF'
		PermitRootLogin prohibit-password
		PasswordAuthentication no
		KbdInteractiveAuthentication no
		UseDNS no
	EOF

	# DHCP from qemu's user network, but no default route and no DNS: the guest reaches 10.0.2.0/24 only
	# (10.0.2.2 is the host's loopback), never an outside address.
	cat >"$root/etc/systemd/network/10-qemu.network" <<-'EOF'
		[Match]
		Type=ether

		[Network]
		DHCP=ipv4
		LinkLocalAddressing=no
		IPv6AcceptRA=no

		[DHCPv4]
		UseGateway=no
		UseRoutes=no
		UseDNS=no
		UseNTP=no
		UseDomains=no
		UseHostname=no
	EOF
	chroot "$root" systemctl enable systemd-networkd.service

	# Nothing may run apt/dpkg behind the tests' back, nor waste emulated CPU.
	chroot "$root" systemctl mask apt-daily.timer apt-daily-upgrade.timer apt-daily.service \
		apt-daily-upgrade.service dpkg-db-backup.timer e2scrub_all.timer e2scrub_reap.service \
		fstrim.timer
	# journald: keep logs across the tests' reboots (journalctl -b -1).
	install -d "$root/var/log/journal"

	# The root fs is on virtio-blk behind virtio-pci: the initrd must carry both (MODULES=most does).
	local initrd modules m
	for initrd in "$root"/boot/initrd.img-*; do
		modules=$(chroot "$root" lsinitramfs "/boot/${initrd##*/}")
		for m in virtio_pci virtio_blk ext4; do
			if ! grep -q "/$m\.ko" <<<"$modules"; then
				echo "initrd $initrd lacks $m.ko" >&2
				exit 1
			fi
		done
	done

	# Each boot of a fresh overlay generates (and commits) its own machine id.
	: >"$root/etc/machine-id"
	rm -f "$root/var/lib/dbus/machine-id"
}

if [[ ${1:-} == --customize ]]; then
	shift
	customize "$@"
	exit 0
fi

if [[ $# -lt 2 ]]; then
	echo "usage: $0 OUTDIR PACKAGE..." >&2
	exit 2
fi
if [[ $(id -u) -ne 0 ]]; then
	echo "build-image.sh: must run as root (mmdebstrap root mode + mke2fs -d keep file owners)" >&2
	exit 1
fi

outdir=$1
shift
packages=$(
	IFS=,
	echo "$*"
)
mirror=${CTR2SVC_DEBIAN_MIRROR:-http://deb.debian.org/debian}
size=${CTR2SVC_VM_DISK_SIZE:-8G}
self=$(readlink -f "$0")

mkdir -p "$outdir"
outdir=$(readlink -f "$outdir")
tree=$outdir/tree
cleanup() {
	# --one-file-system: never descend into a mount mmdebstrap may have left behind.
	rm -rf --one-file-system "$tree"
}
trap cleanup EXIT

rm -f "$outdir/id_ed25519" "$outdir/id_ed25519.pub"
ssh-keygen -q -t ed25519 -N '' -C ctr2svc-test-vm -f "$outdir/id_ed25519"

echo "== mmdebstrap bookworm ($mirror): $packages"
SECONDS=0
mmdebstrap --mode=root --variant=minbase --include="$packages" \
	--customize-hook="bash $(printf %q "$self") --customize \"\$1\" $(printf %q "$outdir/id_ed25519.pub")" \
	bookworm "$tree" "deb $mirror bookworm main"
echo "== mmdebstrap took ${SECONDS}s"

shopt -s nullglob
kernels=("$tree"/boot/vmlinuz-*)
initrds=("$tree"/boot/initrd.img-*)
if [[ ${#kernels[@]} -ne 1 || ${#initrds[@]} -ne 1 ]]; then
	echo "expected exactly one kernel and initrd in $tree/boot, got: ${kernels[*]} ${initrds[*]}" >&2
	exit 1
fi
install -m 0644 "${kernels[0]}" "$outdir/vmlinuz"
install -m 0644 "${initrds[0]}" "$outdir/initrd.img"
chroot "$tree" dpkg-query -W -f '${Package} ${Version}\n' >"$outdir/packages.txt"

echo "== mke2fs $size"
SECONDS=0
rm -f "$outdir/disk.img"
truncate -s "$size" "$outdir/disk.img"
mke2fs -q -F -t ext4 -L ctr2svc-root -E root_owner=0:0 -d "$tree" "$outdir/disk.img"
echo "== mke2fs took ${SECONDS}s"
# The cached base is only ever a read-only backing file.
chmod 0444 "$outdir/disk.img"
echo "== done: $(du -sh --apparent-size "$outdir/disk.img" | cut -f1) apparent," \
	"$(du -sh "$outdir/disk.img" | cut -f1) used"
