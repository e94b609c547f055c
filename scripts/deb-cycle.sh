#!/usr/bin/env bash
# make deb-cycle: a piuparts-style install N → upgrade to N+1 → reinstall → remove → purge cycle in
# a clean Debian 12 tree, after an install on a full disk that must fail cleanly. N+1 is dist/titus-node_*.deb; N is the same package repacked as version
# VERSION~prev1 with different shipped conffiles (as if upstream changed them in N+1). Checks:
#   full disk: dpkg -i onto a 16 MiB /opt fails (ENOSPC), the package is not installed, no file left
#   runc:      the titus runtime runs Debian's /usr/sbin/runc, docker-ce's /usr/bin/runc, and fails
#              naming both when there is none
#   full /opt: N installed on a 512 MiB /opt, filled to 8 MiB free: dpkg -i of N+1 fails (ENOSPC), N
#              stays installed and configured (ii, dpkg --audit empty, dpkg --verify clean), no
#              .dpkg-new/-tmp left, N's venv imports everything, the agent never stopped; once
#              space is freed the same dpkg -i succeeds (the upgrade below)
#   install N: venv runs, conffiles, units, dockremap + subuid/subgid, daemon.json merged with the
#              operator's key already there
#   upgrade:   the operator's edited agent.toml kept (N+1's as .dpkg-dist), an unedited conffile
#              updated, daemon.json and the subordinate ranges not rewritten (the operator's later
#              key kept), the agent restarted, the scheduler only try-restarted (never stopped), and the installed
#              venv imports every module (scripts/venv-import-check.py)
#   reinstall: a second configure changes nothing
#   remove:    conffiles and postinst's changes stay (only purge undoes them)
#   purge:     the tree's file list is what it was before install, the operator's daemon.json key kept
# The base tree (debootstrap minbase + the package's dependencies) is cached in
# /var/cache/titus-node/bookworm-deps (TITUS_CYCLE_CACHE) between runs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DEB=$(ls dist/titus-node_*.deb)
CACHE=${TITUS_CYCLE_CACHE:-/var/cache/titus-node/bookworm-deps}
ROOT=$(mktemp -d /var/tmp/titus-cycle.XXXXXX)
MIRROR=${TITUS_MIRROR:-http://deb.debian.org/debian}

cleanup() {
    umount "$ROOT/opt" 2>/dev/null || true
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

# N: the same package as an older version whose shipped agent.toml and scheduler.toml differ.
VERSION=$(dpkg-deb -f "$DEB" Version)
bash scripts/deb-repack.sh "$DEB" "$VERSION~prev1" "$ROOT/tmp/prev.deb" "# as shipped by $VERSION~prev1"

echo "deb-cycle: install on a full disk (16 MiB /opt): dpkg must fail and leave nothing behind"
mount -t tmpfs -o size=16m titus-full "$ROOT/opt"
if in_root dpkg -i /tmp/pkg.deb > "$ROOT/tmp/full.log" 2>&1; then umount "$ROOT/opt"; fail "dpkg -i succeeded on a full disk"; fi
umount "$ROOT/opt"
grep -q 'No space left on device' "$ROOT/tmp/full.log" || fail "full disk: not the expected error: $(tail -3 "$ROOT/tmp/full.log")"
status=$(in_root dpkg-query -W -f '${db:Status-Status}' titus-node 2>/dev/null || true)
[ -z "$status" ] || [ "$status" = not-installed ] || fail "full disk left titus-node in state '$status'"
[ "$(snapshot)" = "$before" ] || { diff <(echo "$before") <(snapshot) >&2 || true; fail "full disk: the failed install left files"; }
cmp -s <(echo '{"log-driver": "journald"}') "$ROOT/etc/docker/daemon.json" || fail "full disk: daemon.json touched"
echo "deb-cycle: full disk refused cleanly: $(grep -m1 'No space left' "$ROOT/tmp/full.log")"

echo "deb-cycle: install $VERSION~prev1 (on a 512 MiB /opt, filled before the upgrade below)"
mount -t tmpfs -o size=512m titus-opt "$ROOT/opt"
in_root dpkg -i /tmp/prev.deb
in_root titusctl --help >/dev/null || fail "titusctl"
in_root /opt/titus-node/venv/bin/titus-scheduler --help >/dev/null || fail "titus-scheduler entry point"
[ -L "$ROOT/etc/systemd/system/multi-user.target.wants/titus-agent.service" ] || fail "agent not enabled"
[ ! -e "$ROOT/etc/systemd/system/multi-user.target.wants/titus-scheduler.service" ] || fail "scheduler enabled"
grep -q '^/etc/titus/agent.toml' "$ROOT/var/lib/dpkg/info/titus-node.conffiles" || fail "agent.toml not a conffile"
grep -q '^dockremap:' "$ROOT/etc/subuid" && grep -q '^dockremap:' "$ROOT/etc/subgid" || fail "subuid/subgid"
grep -q '^kernel.keys.maxkeys = 1000000$' "$ROOT/usr/lib/sysctl.d/90-titus-node.conf" || fail "kernel keys sysctl file"
python3 - "$ROOT/etc/docker/daemon.json" <<'PY' || fail "daemon.json"
import json, sys
d = json.load(open(sys.argv[1]))
assert d == {"log-driver": "journald", "userns-remap": "default", "live-restore": True,
             "iptables": False, "ip-masq": False, "bridge": "none",
             "runtimes": {"titus": {"path": "/usr/lib/titus-node/titus-runc"}}}, d
PY
in_root /usr/lib/titus-node/titus-runc --version | grep -q '^runc version' || fail "the titus runtime does not run runc"
# A docker-ce host: runc only at /usr/bin/runc (containerd.io), none in /usr/sbin; then no runc at all.
mv "$ROOT/usr/sbin/runc" "$ROOT/tmp/runc.debian" && rm "$ROOT/usr/bin/runc" && cp -a "$ROOT/tmp/runc.debian" "$ROOT/usr/bin/runc"
in_root /usr/lib/titus-node/titus-runc --version | grep -q '^runc version' || fail "the titus runtime does not find /usr/bin/runc"
rm "$ROOT/usr/bin/runc"
if in_root /usr/lib/titus-node/titus-runc --version 2>"$ROOT/tmp/runc.err"; then fail "titus-runc ran without any runc"; fi
grep -q 'no runc found: .* /usr/sbin/runc /usr/bin/runc is an executable file' "$ROOT/tmp/runc.err" || fail "titus-runc without runc: $(cat "$ROOT/tmp/runc.err")"
mv "$ROOT/tmp/runc.debian" "$ROOT/usr/sbin/runc" && ln -s ../sbin/runc "$ROOT/usr/bin/runc" && rm "$ROOT/tmp/runc.err"

echo "deb-cycle: upgrade $VERSION~prev1 -> $VERSION onto a full /opt: dpkg must fail, N stays installed and intact"
# What the maintainer scripts ask systemd to do: a policy-rc.d that logs and denies (exit 101), and
# /run/systemd/system so the debhelper snippets believe systemd is running.
cp "$ROOT/usr/sbin/policy-rc.d" "$ROOT/tmp/policy-rc.d.orig"
printf '#!/bin/sh\necho "$*" >> /tmp/invoked\nexit 101\n' > "$ROOT/usr/sbin/policy-rc.d"
mkdir -p "$ROOT/run/systemd/system"
sum0=$(md5sum "$ROOT/etc/docker/daemon.json" "$ROOT/etc/subuid" "$ROOT/etc/subgid")
fallocate -l $(( $(df --output=avail -B1 "$ROOT/opt" | tail -1) - 8 * 1048576 )) "$ROOT/opt/filler"  # 8 MiB left
if in_root dpkg -i /tmp/pkg.deb > "$ROOT/tmp/full-upgrade.log" 2>&1; then fail "the upgrade succeeded on a full /opt"; fi
grep -q 'No space left on device' "$ROOT/tmp/full-upgrade.log" || fail "full /opt upgrade: not ENOSPC: $(tail -3 "$ROOT/tmp/full-upgrade.log")"
echo "deb-cycle: full /opt refused the upgrade: $(grep -m1 'No space left' "$ROOT/tmp/full-upgrade.log")"
[ "$(in_root dpkg-query -W -f '${Version} ${db:Status-Abbrev}' titus-node)" = "$VERSION~prev1 ii " ] \
    || fail "after the failed upgrade titus-node is '$(in_root dpkg-query -W -f '${Version} ${db:Status-Abbrev}' titus-node)', not $VERSION~prev1 installed and configured"
[ -z "$(in_root dpkg --audit)" ] || fail "dpkg --audit after the failed upgrade: $(in_root dpkg --audit)"
in_root dpkg --verify titus-node || fail "N's files changed by the failed upgrade (dpkg --verify above)"
left=$(find "$ROOT/opt" "$ROOT/etc/titus" "$ROOT/usr/lib/titus-node" "$ROOT/lib/systemd/system" "$ROOT/usr/bin" \
    -name '*.dpkg-new' -o -name '*.dpkg-tmp' -o -name '*.dpkg-backup' -o -name '*.dpkg-dist')
[ -z "$left" ] || fail "the failed upgrade left: $left"
[ "$(md5sum "$ROOT/etc/docker/daemon.json" "$ROOT/etc/subuid" "$ROOT/etc/subgid")" = "$sum0" ] \
    || fail "the failed upgrade changed daemon.json or the subordinate ranges"
! grep -q 'titus-agent.service stop' "$ROOT/tmp/invoked" 2>/dev/null || fail "the failed upgrade stopped the agent: $(cat "$ROOT/tmp/invoked")"
in_root titusctl --help >/dev/null || fail "N's titusctl broken after the failed upgrade"
cp scripts/venv-import-check.py "$ROOT/tmp/import-check.py"
in_root /opt/titus-node/venv/bin/python -I /tmp/import-check.py >/dev/null \
    || fail "N's venv cannot import every module after the failed upgrade"
rm -f "$ROOT/opt/filler" "$ROOT/tmp/invoked"

echo "deb-cycle: space freed; upgrade $VERSION~prev1 -> $VERSION again"
echo 'log_level = "debug"   # the operator'"'"'s' >> "$ROOT/etc/titus/agent.toml"
operators_agent=$(md5sum < "$ROOT/etc/titus/agent.toml")
python3 - "$ROOT/etc/docker/daemon.json" <<'PY'   # the operator adds a key after install
import json, sys
d = json.load(open(sys.argv[1])); d["debug"] = True
open(sys.argv[1], "w").write(json.dumps(d, indent=2) + "\n")
PY
sum1=$(md5sum "$ROOT/etc/docker/daemon.json" "$ROOT/etc/subuid" "$ROOT/etc/subgid")
in_root dpkg -i --force-confdef --force-confold /tmp/pkg.deb
rm -rf "$ROOT/run/systemd"
cp "$ROOT/tmp/policy-rc.d.orig" "$ROOT/usr/sbin/policy-rc.d"
[ "$(in_root dpkg-query -W -f '${Version}' titus-node)" = "$VERSION" ] || fail "not upgraded to $VERSION"
[ "$(md5sum < "$ROOT/etc/titus/agent.toml")" = "$operators_agent" ] || fail "upgrade replaced the edited agent.toml"
cmp -s "$ROOT/etc/titus/agent.toml.dpkg-dist" packaging/agent.toml || fail "no agent.toml.dpkg-dist with $VERSION's file"
cmp -s "$ROOT/etc/titus/scheduler.toml" packaging/scheduler.toml || fail "the unedited scheduler.toml was not updated"
[ "$(md5sum "$ROOT/etc/docker/daemon.json" "$ROOT/etc/subuid" "$ROOT/etc/subgid")" = "$sum1" ] \
    || fail "the upgrade rewrote daemon.json or the subordinate ranges"
grep -qx 'titus-agent.service restart' "$ROOT/tmp/invoked" || fail "the upgrade did not restart titus-agent ($(cat "$ROOT/tmp/invoked" 2>/dev/null))"
[ "$(grep titus-scheduler "$ROOT/tmp/invoked")" = 'titus-scheduler.service try-restart' ] \
    || fail "the scheduler must only be try-restarted (restarted where it runs): $(cat "$ROOT/tmp/invoked")"
in_root /opt/titus-node/venv/bin/python -I /tmp/import-check.py \
    || fail "the installed venv cannot import every module (scripts/venv-import-check.py)"

echo "deb-cycle: reinstall (postinst configure again)"
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
python3 -c 'import json,sys; assert json.load(open(sys.argv[1])) == {"log-driver": "journald", "debug": True}' "$ROOT/etc/docker/daemon.json" \
    || fail "purge did not leave exactly the operator's daemon.json keys"
[ -z "$(ls -A "$ROOT/opt")" ] || fail "purge left in /opt: $(ls -A "$ROOT/opt")"
umount "$ROOT/opt"
echo "deb-cycle: install N, upgrade to N+1, reinstall, remove, purge: clean"
