#!/usr/bin/env bash
# make deb-cycle: a piuparts-style install → reinstall (upgrade path) → remove → purge cycle of
# dist/titus-node_*.deb in a clean Debian 12 tree, checking after each step:
#   install: venv runs, conffiles, units, dockremap + subuid/subgid, daemon.json merged with the
#            operator's key already there; reinstall changes nothing
#   remove:  conffiles and postinst's changes stay (only purge undoes them)
#   purge:   the tree's file list is what it was before install, the operator's daemon.json key kept
# The base tree (debootstrap minbase + the package's dependencies) is cached in
# /var/cache/titus-node/bookworm-deps (TITUS_CYCLE_CACHE) between runs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DEB=$(ls dist/titus-node_*.deb)
CACHE=${TITUS_CYCLE_CACHE:-/var/cache/titus-node/bookworm-deps}
ROOT=$(mktemp -d /var/tmp/titus-cycle.XXXXXX)
MIRROR=${TITUS_MIRROR:-http://deb.debian.org/debian}

cleanup() {
    umount "$ROOT/proc" 2>/dev/null || true
    rm -rf --one-file-system "$ROOT"
}
trap cleanup EXIT
trap "exit 143" INT TERM
fail() { echo "deb-cycle: FAIL: $*" >&2; exit 1; }
in_root() { chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive "$@"; }
# Every path but the ones any dpkg/apt run rewrites, and /opt itself: debootstrap makes it but no
# package owns it, so dpkg removes it with the last package that shipped a file below it.
snapshot() {
    (cd "$ROOT" && find . -xdev \( -path ./proc -o -path ./var/cache -o -path ./var/log -o -path ./var/lib/dpkg \
        -o -path ./var/lib/apt -o -path ./tmp -o -path ./root/.cache -o -name '*-' -path './etc/*' \) -prune -o ! -path ./opt -print | sort)
}

if [ ! -e "$CACHE/.complete" ]; then
    if [ ! -e "$CACHE/.base" ]; then
        rm -rf "$CACHE"
        debootstrap --variant=minbase bookworm "$CACHE" "$MIRROR" >/dev/null
        touch "$CACHE/.base"
    fi
    printf '#!/bin/sh\nexit 101\n' > "$CACHE/usr/sbin/policy-rc.d"  # no daemons start in the tree
    chmod 755 "$CACHE/usr/sbin/policy-rc.d"
    mount -t proc proc "$CACHE/proc"
    deps=$(dpkg-deb -f "$DEB" Depends | sed 's/([^)]*)//g; s/|[^,]*//g; s/,/ /g')
    chroot "$CACHE" apt-get -q -y install --no-install-recommends $deps >/dev/null || { umount "$CACHE/proc"; exit 1; }
    chroot "$CACHE" apt-get clean
    umount "$CACHE/proc"
    touch "$CACHE/.complete"
fi
cp -a "$CACHE/." "$ROOT/"
mount -t proc proc "$ROOT/proc"
mkdir -p "$ROOT/etc/docker"
echo '{"log-driver": "journald"}' > "$ROOT/etc/docker/daemon.json"   # the operator's
before=$(snapshot)
cp "$DEB" "$ROOT/tmp/pkg.deb"

echo "deb-cycle: install"
in_root dpkg -i /tmp/pkg.deb
in_root /opt/titus-node/venv/bin/python -c 'import agent.main, scheduler.main, cpuset._cpuset_core, systemd.daemon' \
    || fail "the venv cannot import the daemons, the C core or systemd-python"
in_root titusctl --help >/dev/null || fail "titusctl"
in_root /opt/titus-node/venv/bin/titus-scheduler --help >/dev/null || fail "titus-scheduler entry point"
[ -L "$ROOT/etc/systemd/system/multi-user.target.wants/titus-agent.service" ] || fail "agent not enabled"
[ ! -e "$ROOT/etc/systemd/system/multi-user.target.wants/titus-scheduler.service" ] || fail "scheduler enabled"
grep -q '^/etc/titus/agent.toml' "$ROOT/var/lib/dpkg/info/titus-node.conffiles" || fail "agent.toml not a conffile"
grep -q '^dockremap:' "$ROOT/etc/subuid" && grep -q '^dockremap:' "$ROOT/etc/subgid" || fail "subuid/subgid"
python3 - "$ROOT/etc/docker/daemon.json" <<'PY' || fail "daemon.json"
import json, sys
d = json.load(open(sys.argv[1]))
assert d == {"log-driver": "journald", "userns-remap": "default", "live-restore": True,
             "iptables": False, "ip-masq": False, "bridge": "none"}, d
PY
sum1=$(md5sum "$ROOT/etc/docker/daemon.json" "$ROOT/etc/subuid" "$ROOT/etc/subgid")

echo "deb-cycle: reinstall (upgrade path, postinst configure again)"
in_root dpkg -i /tmp/pkg.deb
[ "$(md5sum "$ROOT/etc/docker/daemon.json" "$ROOT/etc/subuid" "$ROOT/etc/subgid")" = "$sum1" ] \
    || fail "a second configure changed daemon.json or the subordinate ranges"

echo "deb-cycle: remove"
in_root dpkg -r titus-node
[ -e "$ROOT/etc/titus/agent.toml" ] || fail "remove deleted a conffile"
[ ! -e "$ROOT/opt/titus-node" ] || fail "remove left /opt/titus-node"

echo "deb-cycle: purge"
in_root dpkg -P titus-node
after=$(snapshot)
if [ "$before" != "$after" ]; then
    diff <(echo "$before") <(echo "$after") >&2 || true
    fail "purge left the tree different from before install"
fi
python3 -c 'import json,sys; assert json.load(open(sys.argv[1])) == {"log-driver": "journald"}' "$ROOT/etc/docker/daemon.json" \
    || fail "purge did not leave exactly the operator's daemon.json keys"
echo "deb-cycle: install, reinstall, remove, purge: clean"
