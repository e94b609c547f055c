#!/usr/bin/env bash
# make image: dist/titus-node-host.raw, a Debian 12 disk that boots from the disk alone, under legacy
# BIOS and UEFI (GRUB 2: scripts/image-bootloader.sh; GPT with a BIOS boot partition, an ESP and an
# ext4 root), with the kernel, systemd, docker.io and dist/titus-node_*.deb installed, the agent
# and (for a one-host image) the scheduler enabled. Built without a loop device or a mount but /proc
# in a chroot: the root file system is filled by mke2fs -d at its partition's offset.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DEB=$(ls dist/titus-node_*.deb)
BASE=${TITUS_CYCLE_CACHE:-/var/cache/titus-node/bookworm-deps}   # from make deb-cycle
KCACHE=/var/cache/titus-node/bookworm-host                         # + kernel, systemd, udev
OUT=dist/titus-node-host
SIZE_MB=${TITUS_IMAGE_MB:-3072}
[ -e "$BASE/.complete" ] || bash scripts/deb-cycle.sh

KPKGS="linux-image-amd64 systemd-sysv udev dbus kmod iptables apparmor"
if [ "$(cat "$KCACHE/.complete" 2>/dev/null)" != "$KPKGS" ]; then
    rm -rf "$KCACHE"
    cp -a "$BASE" "$KCACHE"
    mount -t proc proc "$KCACHE/proc"
    trap 'umount "$KCACHE/proc" 2>/dev/null || true' EXIT
    chroot "$KCACHE" env DEBIAN_FRONTEND=noninteractive apt-get -q -y install --no-install-recommends \
        $KPKGS >/dev/null
    chroot "$KCACHE" apt-get clean
    umount "$KCACHE/proc"
    trap - EXIT
    echo "$KPKGS" > "$KCACHE/.complete"
fi

TREE=$(mktemp -d /var/tmp/titus-image.XXXXXX)
cleanup() { umount "$TREE/proc" 2>/dev/null || true; rm -rf --one-file-system "$TREE"; }
trap cleanup EXIT
trap "exit 143" INT TERM
cp -a "$KCACHE/." "$TREE/"
rm -f "$TREE/.complete" "$TREE/.base" "$TREE/usr/sbin/policy-rc.d"
mount -t proc proc "$TREE/proc"
cp "$DEB" "$TREE/tmp/pkg.deb"
chroot "$TREE" env DEBIAN_FRONTEND=noninteractive dpkg -i /tmp/pkg.deb >/dev/null
rm -f "$TREE/tmp/pkg.deb"
# The guest reaches no registry (its images are preloaded): no registry health check, else the
# host is tainted health.registry and takes no work (an edited conffile, as an operator's would be).
# Under TCG on a loaded 2-core machine the engine check's scratch container takes 20-40 s (its
# timeout is twice the budget, 20 s by default): the check failed, the host was tainted and a job
# stayed Accepted. A VM-test image only: 60 s budget (a real host keeps 10 s).
sed -i 's/^\[labels\]/# the VM image reaches no registry: images are preloaded\nhealth_registry_image = ""\n# a TCG guest: the engine check'"'"'s scratch container takes tens of seconds\nhealth_scratch_budget_seconds = 60.0\n\n[labels]/' \
    "$TREE/etc/titus/agent.toml"
grep -q '^health_registry_image = ""' "$TREE/etc/titus/agent.toml"
grep -q '^health_scratch_budget_seconds = 60.0' "$TREE/etc/titus/agent.toml"
# One-host cell (docs/trust.md): the cell CA and a bootstrap token for the agent's node id, made
# offline at bake time; the VM test's titusctl gets the CA and the admin certificate next to the
# image. An AMI bake does neither: the CA stays on the control-plane host, the token comes in
# user-data.
NODE_ID=vm-node
chroot "$TREE" /opt/titus-node/venv/bin/titus-scheduler ca init --pki /var/lib/titus/pki >/dev/null
chroot "$TREE" /opt/titus-node/venv/bin/titus-scheduler token create --db /var/lib/titus/scheduler.db \
    --nodes "$NODE_ID" --ttl 30d > "$TREE/etc/titus/bootstrap.token"
chmod 600 "$TREE/etc/titus/bootstrap.token"
install -D -m 644 "$TREE/var/lib/titus/pki/ca.crt" "$TREE/etc/titus/pki/ca.crt"
rm -rf "$OUT.pki" && mkdir -p "$OUT.pki"
cp "$TREE"/var/lib/titus/pki/{ca.crt,admin.crt,admin.key} "$OUT.pki/"
umount "$TREE/proc"
# The VM's upgrade test: the same package as version N+1, installed over it inside the guest.
VERSION=$(dpkg-deb -f "$DEB" Version)
mkdir -p "$TREE/var/lib/titus-upgrade"
bash scripts/deb-repack.sh "$DEB" "$VERSION+vmtest1" "$TREE/var/lib/titus-upgrade/titus-node.deb"

# The host: name (root is mounted by UUID: scripts/image-bootloader.sh writes fstab), DHCP on every ethernet, the console on ttyS0 with
# root logged in (the VM test drives it; an AMI bake replaces this with cloud-init and no console).
echo titus-host > "$TREE/etc/hostname"
mkdir -p "$TREE/etc/systemd/network" "$TREE/etc/systemd/system/serial-getty@ttyS0.service.d"
printf '[Match]\nName=en* eth*\n[Network]\nDHCP=yes\n' > "$TREE/etc/systemd/network/80-dhcp.network"
ln -sf /lib/systemd/system/systemd-networkd.service "$TREE/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
printf '[Service]\nExecStart=\nExecStart=-/sbin/agetty --autologin root --keep-baud 115200 %%I $TERM\n' \
    > "$TREE/etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf"
# One-host image: the scheduler runs here too, the agent's and scheduler's APIs are reachable from
# outside the guest (the VM test forwards them to the host's loopback).
ln -sf /lib/systemd/system/titus-scheduler.service "$TREE/etc/systemd/system/multi-user.target.wants/titus-scheduler.service"
printf 'TITUS_SCHEDULER_OPTS="--listen 0.0.0.0:7100"\n' > "$TREE/etc/default/titus-scheduler"
printf 'TITUS_AGENT_OPTS="--listen 0.0.0.0:7101 --node-id %s"\n' "$NODE_ID" > "$TREE/etc/default/titus-agent"
# The test image, loaded into the guest's engine at boot (the guest reaches no registry).
IMAGE=${TITUS_TEST_IMAGE:-127.0.0.1:5000/titus/busybox:latest}
mkdir -p "$TREE/var/lib/titus-preload"
python3 scripts/registry-save.py "$IMAGE" "$TREE/var/lib/titus-preload/images.tar"  # no engine needed
cat > "$TREE/etc/systemd/system/titus-preload.service" <<UNIT
[Unit]
Description=Load the test images into the engine (VM test image only)
After=docker.service
Requires=docker.service
Before=titus-agent.service
ConditionPathExists=/var/lib/titus-preload/images.tar
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/bin/docker load -i /var/lib/titus-preload/images.tar
[Install]
WantedBy=multi-user.target
UNIT
ln -sf /etc/systemd/system/titus-preload.service "$TREE/etc/systemd/system/multi-user.target.wants/titus-preload.service"

mkdir -p dist
rm -f "$OUT.raw" "$OUT.vmlinuz" "$OUT.initrd"
[ -e "$TREE/vmlinuz" ] && [ -e "$TREE/initrd.img" ] || { echo "make image: no /vmlinuz or /initrd.img in the tree" >&2; exit 1; }
truncate -s "${SIZE_MB}M" "$OUT.raw"
bash scripts/image-bootloader.sh "$OUT.raw" "$TREE"  # partitions, GRUB, fstab, then the root file system
echo "image $OUT.raw: $(du -h --apparent-size "$OUT.raw" | cut -f1) apparent, $(du -h "$OUT.raw" | cut -f1) on disk, tree $(du -sh --one-file-system "$TREE" | cut -f1)"
