#!/usr/bin/env bash
# Host set-up for a one-host titus-node (developer machine, CI, demo box).
#
#   1. apt packages   docker.io docker-registry busybox-static iproute2 nftables
#                     ca-certificates curl libsystemd-dev pkg-config prometheus apparmor
#                     libseccomp2
#                     (apt-get update only if one is missing)
#   2. dockerd        started in the background if `docker info` fails
#   3. registry       Debian's docker-registry on 127.0.0.1:5000 (no auth), if
#                     http://127.0.0.1:5000/v2/ does not answer
#   4. test image     127.0.0.1:5000/titus/busybox:latest, built offline from
#                     busybox-static, if the registry does not have it
#   5. kernel keys    kernel.keys.maxkeys/maxbytes raised (> 200 containers per host)
#
# Idempotent: a second run finds everything in place and changes nothing.
# Works without systemd as PID 1 (daemons are started with setsid/nohup).
#
# Environment:
#   TITUS_SKIP_APT=1          skip the apt part (faster while developing)
#   TITUS_LOG_DIR             daemon logs            (default /var/log/titus)
#   TITUS_RUN_DIR             pid files              (default /run/titus)
#   TITUS_TEST_IMAGE_REPO     test image repository  (default titus/busybox)
#   TITUS_TEST_IMAGE_TAG      test image tag         (default latest)
#   TITUS_WAIT_SECONDS        how long to wait for a daemon to answer (default 30)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOG_DIR=${TITUS_LOG_DIR:-/var/log/titus}
RUN_DIR=${TITUS_RUN_DIR:-/run/titus}
WAIT_SECONDS=${TITUS_WAIT_SECONDS:-30}

# Must match http.addr in packaging/registry/config.yml.
REGISTRY_ADDR=127.0.0.1:5000
REGISTRY_CONFIG="$REPO_ROOT/packaging/registry/config.yml"
REGISTRY_ROOT=/var/lib/titus-registry   # storage.filesystem.rootdirectory
IMAGE_REPO=${TITUS_TEST_IMAGE_REPO:-titus/busybox}
IMAGE_TAG=${TITUS_TEST_IMAGE_TAG:-latest}
IMAGE="$REGISTRY_ADDR/$IMAGE_REPO:$IMAGE_TAG"

# libsystemd-dev + pkg-config: to build systemd-python (journald logging with TASK_ID/JOB_ID fields).
# prometheus: for promtool, which the tests use to lint both /metrics endpoints.
# apparmor: apparmor_parser validates the generated profiles (the kernel here may not enforce them);
# libseccomp2: the seccomp profiles are compiled with it in the tests.
APT_PACKAGES=(docker.io docker-registry busybox-static iproute2 nftables ca-certificates curl libsystemd-dev pkg-config prometheus apparmor libseccomp2
    debhelper lintian debootstrap python3-dev python3-venv libffi-dev fakeroot qemu-system-x86 fdisk bc
    grub-pc-bin grub-efi-amd64-bin mtools ovmf)  # make deb, deb-cycle, image (GRUB for BIOS+UEFI), vm-test

export DEBIAN_FRONTEND=noninteractive
# needrestart (if installed) must not restart services behind our back.
export NEEDRESTART_SUSPEND=1 NEEDRESTART_MODE=l

log()     { printf 'setup-host: %s\n' "$*" >&2; }
die()     { printf 'setup-host: ERROR: %s\n' "$*" >&2; exit 1; }
summary() { printf '%-9s %s\n' "$1:" "$2"; }

# Things to undo on exit (temp dirs, a temporary policy-rc.d).
CLEANUP=()
cleanup() {
    local c
    for c in "${CLEANUP[@]+"${CLEANUP[@]}"}"; do eval "$c" || true; done
}
trap cleanup EXIT

# wait_for SECONDS PID CMD...: run CMD until it succeeds.
# Returns 1 on timeout, 2 if PID (when not empty) has exited meanwhile.
wait_for() {
    local deadline=$((SECONDS + $1)) pid=$2
    shift 2
    until "$@"; do
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then return 2; fi
        if [ "$SECONDS" -ge "$deadline" ]; then return 1; fi
        sleep 0.2
    done
}

# spawn_daemon PIDFILE LOGFILE CMD...: start CMD detached from this shell
# (own session, stdin /dev/null, output appended to LOGFILE, no inherited
# extra fds, so a CI log pipe is not held open). Sets SPAWNED_PID.
spawn_daemon() {
    local pidfile=$1 logfile=$2
    shift 2
    mkdir -p "$(dirname "$pidfile")" "$(dirname "$logfile")"
    printf '\n==== %s setup-host.sh starting: %s\n' "$(date -Is)" "$*" >>"$logfile"
    (
        cd /
        for fd in "/proc/$BASHPID/fd"/*; do
            fd=${fd##*/}
            case $fd in 0 | 1 | 2) ;; *) eval "exec $fd>&-" 2>/dev/null || true ;; esac
        done
        # No job control in a script, so this subshell is not a process group
        # leader and setsid(1) does not fork: $! is the daemon's pid.
        exec setsid nohup "$@" </dev/null >>"$logfile" 2>&1
    ) &
    SPAWNED_PID=$!
    echo "$SPAWNED_PID" >"$pidfile"
}

show_log_tail() {
    log "last lines of $1:"
    tail -n 20 "$1" >&2 || true
}

require_root() {
    [ "$(id -u)" -eq 0 ] || die "must run as root (dockerd, /var/lib, apt)"
}

# ---------------------------------------------------------------- apt ------

pkg_installed() {
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]
}

setup_apt() {
    if [ "${TITUS_SKIP_APT:-0}" = 1 ]; then
        summary apt "skipped (TITUS_SKIP_APT=1)"
        return
    fi
    local missing=() p
    for p in "${APT_PACKAGES[@]}"; do
        pkg_installed "$p" || missing+=("$p")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        summary apt "all ${#APT_PACKAGES[@]} packages already installed"
        return
    fi
    log "installing ${missing[*]} (log: $LOG_DIR/apt.log)"
    mkdir -p "$LOG_DIR"
    # This script runs dockerd and the registry itself. Keep the packages'
    # maintainer scripts from starting their own instances with Debian's
    # defaults (the registry's would grab :5000 with htpasswd auth).
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\n# temporary, from titus-node scripts/setup-host.sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 0755 /usr/sbin/policy-rc.d
        CLEANUP+=("rm -f /usr/sbin/policy-rc.d")
    fi
    local apt_opts=(-q -y -o Dpkg::Use-Pty=0 -o DPkg::Lock::Timeout=300)
    if ! { apt-get "${apt_opts[@]}" update &&
        apt-get "${apt_opts[@]}" install --no-install-recommends "${missing[@]}"; } >>"$LOG_DIR/apt.log" 2>&1; then
        show_log_tail "$LOG_DIR/apt.log"
        die "apt-get failed"
    fi
    summary apt "installed ${missing[*]}"
}

require_commands() {
    local missing=() c
    for c in docker dockerd docker-registry curl tar setsid; do
        command -v "$c" >/dev/null 2>&1 || missing+=("$c")
    done
    [ ${#missing[@]} -eq 0 ] ||
        die "missing command(s): ${missing[*]} (run without TITUS_SKIP_APT=1 to install them)"
}

# ------------------------------------------------------------- dockerd -----

docker_ok() { timeout 10 docker info >/dev/null 2>&1; }

# Container root must not be host root: dockerd runs with user-namespace remapping ("default" makes
# dockerd create the dockremap user and its /etc/subuid, /etc/subgid ranges).
DOCKERD_ARGS=(--iptables=false --ip-masq=false --bridge=none --userns-remap=default)

docker_userns() { docker info --format '{{range .SecurityOptions}}{{.}} {{end}}' 2>/dev/null | grep -q 'name=userns'; }

docker_desc() {
    local userns=off
    docker_userns && userns=on
    echo "$(docker info --format 'engine {{.ServerVersion}}, storage {{.Driver}}, cgroup v{{.CgroupVersion}} ({{.CgroupDriver}})' 2>/dev/null || echo "?"), userns-remap $userns"
}

# stop_dockerd PID: SIGTERM and wait (dockerd stops its containers' shims cleanly).
stop_dockerd() {
    local pid=$1
    kill "$pid" 2>/dev/null || return 0
    wait_for 60 "" bash -c "! kill -0 $pid 2>/dev/null" || die "dockerd (pid $pid) did not stop within 60s"
}

setup_dockerd() {
    if docker_ok; then
        if docker_userns; then
            summary dockerd "already running ($(docker_desc))"
            return
        fi
        # Running without userns-remap: restart it only if this script started it (or when asked);
        # someone else's engine is theirs to reconfigure.
        local ours="" running
        running=$(cat /var/run/docker.pid 2>/dev/null || true)
        [ -s "$RUN_DIR/dockerd.pid" ] && [ "$(cat "$RUN_DIR/dockerd.pid")" = "$running" ] && ours=1
        if [ -z "$ours" ] && [ "${TITUS_RESTART_DOCKERD:-0}" != 1 ]; then
            log "WARNING: dockerd runs without --userns-remap: container root is host root, and the"
            log "userns tests will fail. Restart it with ${DOCKERD_ARGS[*]} or rerun with TITUS_RESTART_DOCKERD=1."
            summary dockerd "already running, NOT remapped ($(docker_desc))"
            return
        fi
        log "restarting dockerd (pid $running) with --userns-remap=default"
        stop_dockerd "$running"
    fi
    local pidfile=/var/run/docker.pid pid="" action
    if [ -s "$pidfile" ]; then
        pid=$(cat "$pidfile")
        if kill -0 "$pid" 2>/dev/null && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ]; then
            log "dockerd (pid $pid) is running but does not answer yet, waiting"
            action="was starting"
        else
            log "removing stale $pidfile (pid $pid)"
            rm -f "$pidfile"
            pid=""
        fi
    fi
    if [ -z "$pid" ]; then
        # No iptables/NAT and no default bridge: containers get --network none
        # (or host); titus-agent sets up container networking itself.
        spawn_daemon "$RUN_DIR/dockerd.pid" "$LOG_DIR/dockerd.log" dockerd "${DOCKERD_ARGS[@]}"
        pid=$SPAWNED_PID
        action="started"
    fi
    local rc=0
    wait_for "$WAIT_SECONDS" "$pid" docker_ok || rc=$?
    if [ $rc -ne 0 ]; then
        show_log_tail "$LOG_DIR/dockerd.log"
        [ $rc -eq 2 ] && die "dockerd (pid $pid) exited"
        die "dockerd did not answer 'docker info' within ${WAIT_SECONDS}s"
    fi
    summary dockerd "$action (pid $pid, $(docker_desc), log $LOG_DIR/dockerd.log)"
}

# ------------------------------------------------------------ registry -----

registry_ok() { curl -sf -o /dev/null --max-time 3 "http://$REGISTRY_ADDR/v2/"; }

setup_registry() {
    if registry_ok; then
        summary registry "already running (http://$REGISTRY_ADDR)"
        return
    fi
    [ -f "$REGISTRY_CONFIG" ] || die "registry config $REGISTRY_CONFIG not found"
    local port=${REGISTRY_ADDR##*:}
    if command -v ss >/dev/null 2>&1 && [ -n "$(ss -Hltn "sport = :$port" 2>/dev/null)" ]; then
        # Something listens already: maybe our registry still starting up.
        if wait_for 10 "" registry_ok; then
            summary registry "already running (http://$REGISTRY_ADDR)"
            return
        fi
        die "port $port is in use but http://$REGISTRY_ADDR/v2/ does not answer 200: $(ss -Hltnp "sport = :$port" 2>/dev/null | tr -s ' ')"
    fi
    mkdir -p "$REGISTRY_ROOT"
    spawn_daemon "$RUN_DIR/registry.pid" "$LOG_DIR/registry.log" \
        docker-registry serve "$REGISTRY_CONFIG"
    local pid=$SPAWNED_PID rc=0
    wait_for "$WAIT_SECONDS" "$pid" registry_ok || rc=$?
    if [ $rc -ne 0 ]; then
        show_log_tail "$LOG_DIR/registry.log"
        [ $rc -eq 2 ] && die "docker-registry (pid $pid) exited"
        die "registry did not answer http://$REGISTRY_ADDR/v2/ within ${WAIT_SECONDS}s"
    fi
    summary registry "started (pid $pid, http://$REGISTRY_ADDR, data $REGISTRY_ROOT, log $LOG_DIR/registry.log)"
}

# ---------------------------------------------------------- test image -----

image_in_registry() {
    curl -sf -o /dev/null --max-time 10 \
        -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
        "http://$REGISTRY_ADDR/v2/$IMAGE_REPO/manifests/$IMAGE_TAG"
}

busybox_path() {
    local p
    p=$(dpkg-query -L busybox-static 2>/dev/null | grep -E '/bin/busybox$' | head -n 1 || true)
    [ -n "$p" ] && [ -x "$p" ] || p=$(command -v busybox || true)
    [ -n "$p" ] || die "busybox not found (apt package busybox-static)"
    # The image has no libc: the binary must be static.
    if ldd "$p" >/dev/null 2>&1; then
        die "$p is dynamically linked; install busybox-static"
    fi
    echo "$p"
}

build_image() {
    local bb tmp root applet
    bb=$(busybox_path)
    tmp=$(mktemp -d /tmp/titus-image.XXXXXX)
    CLEANUP+=("rm -rf '$tmp'")
    root=$tmp/rootfs
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,root,home,var,dev,proc,sys,run}
    mkdir -m 1777 "$root/tmp" "$root/var/tmp"
    chmod 1777 "$root/tmp" "$root/var/tmp"   # mkdir -m is subject to umask
    chmod 0700 "$root/root"
    install -m 0755 "$bb" "$root/bin/busybox"
    # One symlink per applet, where busybox itself would install it
    # (bin/sh, usr/bin/env, sbin/ip ...).
    while read -r applet; do
        applet=${applet#/}
        [ -n "$applet" ] && [ "$applet" != bin/busybox ] || continue
        mkdir -p "$root/$(dirname "$applet")"
        [ -e "$root/$applet" ] || [ -L "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
    done < <("$root/bin/busybox" --list-full 2>/dev/null || "$root/bin/busybox" --list | sed 's|^|bin/|')
    [ -L "$root/bin/sh" ] || die "busybox has no sh applet?"
    cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
    cat >"$root/etc/group" <<'EOF'
root:x:0:
nobody:x:65534:
EOF
    chmod 0644 "$root/etc/passwd" "$root/etc/group"

    # Fixed owner/order/mtime: the same busybox gives the same layer digest.
    tar -C "$root" --numeric-owner --owner=0 --group=0 --sort=name \
        --mtime='2024-01-01 00:00:00Z' -c . |
        docker import \
            --change 'CMD ["/bin/sh"]' \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --message "titus-node test image (busybox-static $(dpkg-query -W -f='${Version}' busybox-static 2>/dev/null || echo '?'))" \
            - "$IMAGE" >/dev/null

    # Check that it runs before publishing it.
    local out
    docker run --rm --network none "$IMAGE" true ||
        die "test image $IMAGE does not run ('true' failed)"
    out=$(docker run --rm --network none "$IMAGE" sh -c 'echo ok $(id -u nobody)') ||
        die "test image $IMAGE does not run (sh -c failed)"
    [ "$out" = "ok 65534" ] || die "test image $IMAGE: unexpected output '$out'"

    docker push "$IMAGE" >>"$LOG_DIR/image-push.log" 2>&1 || {
        show_log_tail "$LOG_DIR/image-push.log"
        die "docker push $IMAGE failed"
    }
    image_in_registry || die "pushed $IMAGE but the registry does not serve its manifest"
}

setup_image() {
    if image_in_registry; then
        # Each userns-remap mapping has its own image store: make sure this engine has the image,
        # so tests and benches that start containers directly do not each pull it first.
        if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
            docker pull -q "$IMAGE" >/dev/null || die "cannot pull $IMAGE from the local registry"
            summary image "pulled from the registry ($IMAGE)"
            return
        fi
        summary image "already in registry ($IMAGE)"
        return
    fi
    mkdir -p "$LOG_DIR"
    build_image
    summary image "built and pushed ($IMAGE, $(docker image inspect -f '{{.Size}}' "$IMAGE" 2>/dev/null || echo '?') bytes)"
}

# ------------------------------------------------------ titus-runc runtime -----
# Tasks join a network namespace the agent prepared (docs/launch-netns.md): dockerd runs them with
# the `titus` runtime, a wrapper around runc. Installed and registered idempotently; dockerd picks up
# `runtimes` from daemon.json on SIGHUP (no restart: running containers are not disturbed).
TITUS_RUNC=/usr/local/lib/titus/titus-runc
DAEMON_JSON=/etc/docker/daemon.json

titus_runtime_registered() {
    docker info --format '{{range $k, $v := .Runtimes}}{{$k}} {{end}}' 2>/dev/null | grep -qw titus
}

# The runtime's `create` is C (native/titus-runc-create.c, libc only): compiled here with gcc, as
# native/Makefile's runc-create target does, then installed next to the front.
install_titus_runc() {
    local dir built
    dir="$(dirname "$TITUS_RUNC")"
    command -v gcc >/dev/null || die "gcc is needed to build the titus runtime's create (native/titus-runc-create.c)"
    mkdir -p "$dir"
    built="$dir/titus-runc-create.new"
    gcc -std=c99 -O2 -Wall -Wextra -o "$built" "$REPO_ROOT/native/titus-runc-create.c" \
        || die "cannot compile native/titus-runc-create.c"
    chmod 0755 "$built"
    # The front first: it execs whatever titus-runc-create is there, and runs the Python one an
    # older install left (through its shebang) as well as the binary; the older front could not
    # run the binary.
    install -D -m 0755 "$REPO_ROOT/scripts/titus-runc" "$dir/titus-runc.new"
    mv -f "$dir/titus-runc.new" "$dir/titus-runc"
    mv -f "$built" "$dir/titus-runc-create"
}

setup_titus_runtime() {
    install_titus_runc
    mkdir -p /run/titus/netns
    if titus_runtime_registered; then
        summary runtime "titus registered ($TITUS_RUNC)"
        return
    fi
    python3 - "$DAEMON_JSON" "$TITUS_RUNC" <<'PY' || die "cannot write $DAEMON_JSON"
import json, os, sys
path, runc = sys.argv[1], sys.argv[2]
doc = {}
if os.path.exists(path):
    with open(path) as f:
        doc = json.load(f)
doc.setdefault("runtimes", {})["titus"] = {"path": runc}
os.makedirs(os.path.dirname(path), exist_ok=True)
with open(path + ".new", "w") as f:
    json.dump(doc, f, indent=2)
os.replace(path + ".new", path)
PY
    kill -HUP "$(cat /var/run/docker.pid)" || die "cannot signal dockerd to reload $DAEMON_JSON"
    wait_for 30 "" titus_runtime_registered || die "dockerd did not register the titus runtime (see $LOG_DIR/dockerd.log)"
    summary runtime "titus registered by reload ($TITUS_RUNC)"
}

# Kernel keys: runc gives every container a session keyring, owned by the container's root. Under
# --userns-remap every container's root is the same host uid, and the kernel's per-user quota for a
# non-root uid (kernel.keys.maxkeys, default 200) then caps the host at 200 containers: the 201st
# fails "unable to create session key: disk quota exceeded" (found by bench/footprint.py --running
# at 250 tasks). Give remapped roots root's own quota.
# The values are the package's (packaging/sysctl/90-titus-node.conf), so a dev host and a packaged
# one agree.
KEYS_SYSCTL=/etc/sysctl.d/90-titus-keys.conf
KEYS_SOURCE=$REPO_ROOT/packaging/sysctl/90-titus-node.conf
setup_kernel_keys() {
    local want_keys want_bytes
    want_keys=$(awk '$1 == "kernel.keys.maxkeys" { print $3 }' "$KEYS_SOURCE")
    want_bytes=$(awk '$1 == "kernel.keys.maxbytes" { print $3 }' "$KEYS_SOURCE")
    [ -n "$want_keys" ] && [ -n "$want_bytes" ] || die "no kernel.keys values in $KEYS_SOURCE"
    if [ "$(sysctl -n kernel.keys.maxkeys)" -ge "$want_keys" ] && [ "$(sysctl -n kernel.keys.maxbytes)" -ge "$want_bytes" ]; then
        summary keys "kernel.keys.maxkeys/maxbytes already >= $want_keys/$want_bytes"
        return
    fi
    cp "$KEYS_SOURCE" "$KEYS_SYSCTL"
    sysctl -q -w kernel.keys.maxkeys="$want_keys" kernel.keys.maxbytes="$want_bytes" \
        || die "cannot raise kernel.keys.maxkeys (more than 200 containers per host need it)"
    summary keys "kernel.keys.maxkeys=$want_keys maxbytes=$want_bytes ($KEYS_SYSCTL)"
}

# ---------------------------------------------------------------- main -----

require_root
mkdir -p "$LOG_DIR" "$RUN_DIR"
setup_apt
require_commands
setup_kernel_keys
setup_dockerd
setup_titus_runtime
setup_registry
setup_image
