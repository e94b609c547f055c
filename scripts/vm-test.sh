#!/usr/bin/env bash
# make vm-test: boot dist/titus-node-host.raw from the disk alone (its GRUB, no -kernel: legacy BIOS
# by default, TITUS_VM_FIRMWARE=uefi for OVMF) under QEMU (TCG: this host's /dev/kvm hangs guests),
# systemd as PID 1, user networking restricted to two port forwards on the host's loopback, and
# check from the host (titusctl over TLS with the image's one-host cell CA, dist/titus-node-host.pki):
#   1. titus-agent reaches READY (Type=notify: ActiveState=active) — boot-to-READY is measured
#   2. a batch job submitted with titusctl runs to `normal`; a 3-task service job runs
#   3. systemctl kill -s SIGSTOP titus-agent → the watchdog restarts it (measured) and it re-adopts
#      the running containers (same container ids, titus_agent_adopted_total 3)
#   4. systemctl restart docker with live-restore keeps the tasks' processes running (same ids and
#      PIDs; the restart is measured)
#   5. dpkg -i of the same package as version N+1 (baked in by make image) restarts the agent into
#      N+1, which re-adopts the same 3 containers (measured)
# `vm-test.sh --smoke` (make vm-smoke, in CI) stops after 2. and powers the guest off. QEMU runs under
# `timeout TITUS_VM_LIMIT` (seconds; 1500, smoke 600): a hung boot fails and leaves no VM behind
# even if this script is killed.
# The guest is driven over its serial console (root autologin, test image only). Run it under
# /tmp/titus-vm.lock (the Makefile does): it takes both cores for minutes, not the host's engine.
# Prints `RESULT vm …` at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SMOKE=0
[ "${1:-}" = --smoke ] && SMOKE=1
IMG=dist/titus-node-host
FIRMWARE=${TITUS_VM_FIRMWARE:-bios}
LIMIT=${TITUS_VM_LIMIT:-$([ $SMOKE = 1 ] && echo 600 || echo 1500)}
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=/work/main/.venv/bin/python
WORK=$(mktemp -d /var/tmp/titus-vm.XXXXXX)
SOCK=$WORK/console.sock LOG=$WORK/console.log
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
SPORT=$(free_port) APORT=$(free_port)
export TITUS_SCHEDULER=https://127.0.0.1:$SPORT TITUS_CA=$IMG.pki/ca.crt TITUS_CERT=$IMG.pki/admin.crt TITUS_KEY=$IMG.pki/admin.key
QPID=
cleanup() {
    [ -n "$QPID" ] && kill "$QPID" 2>/dev/null && wait "$QPID" 2>/dev/null || true
    [ "${KEEP_LOG:-0}" = 1 ] && cp "$LOG" /tmp/titus-vm-console.log 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap "exit 143" INT TERM
fail() { echo "vm-test: FAIL: $*" >&2; tail -30 "$LOG" >&2 || true; exit 1; }
now() { date +%s.%N; }

case $FIRMWARE in
    bios) FW=() ;;  # QEMU's SeaBIOS: the MBR's GRUB boot.img, then core.img in the BIOS boot partition
    uefi) cp /usr/share/OVMF/OVMF_VARS_4M.fd "$WORK/vars.fd"  # Debian's ovmf: \EFI\BOOT\BOOTX64.EFI on the ESP
          FW=(-drive if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd
              -drive "if=pflash,format=raw,file=$WORK/vars.fd") ;;
    *) echo "vm-test: TITUS_VM_FIRMWARE=$FIRMWARE: bios or uefi" >&2; exit 2 ;;
esac
start=$(now)
timeout -k 10 "$LIMIT" qemu-system-x86_64 -machine q35,accel=tcg -cpu max -smp 2 -m 3072 -display none -monitor none \
    "${FW[@]}" \
    -drive "file=$IMG.raw,format=raw,if=virtio,snapshot=on" \
    -netdev "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:$SPORT-:7100,hostfwd=tcp:127.0.0.1:$APORT-:7101" \
    -device virtio-net-pci,netdev=n0 \
    -chardev "socket,id=s0,path=$SOCK,server=on,wait=off,logfile=$LOG" -serial chardev:s0 \
    >"$WORK/qemu.out" 2>&1 &
QPID=$!

# guest CMD: run CMD on the console, print its output (between markers), return its status.
echo 0 > "$WORK/n"
guest() {  # called in $(…) subshells too: the counter lives in a file
    local n; n=$(( $(cat "$WORK/n") + 1 )); echo "$n" > "$WORK/n"
    "$PY" - "$SOCK" "$LOG" "$n" "$1" <<'PY'
import socket, sys, time, re
sock, log, n, cmd = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
s = socket.socket(socket.AF_UNIX); s.connect(sock)
line = f"echo __B{n}__; {cmd}; echo __E{n}__ $?\n".encode()
for i in range(0, len(line), 4):  # a 16-byte UART FIFO and a slow TCG guest: type, do not paste
    s.sendall(line[i:i + 4]); time.sleep(0.03)
# Read the guest's output from the socket itself: a client that does not drain it fills the socket
# buffer and QEMU then blocks the guest's serial port (and its logfile) for good.
s.settimeout(1.0)
buf, deadline = b"", time.time() + 600
while time.time() < deadline:
    try:
        chunk = s.recv(65536)
    except socket.timeout:
        chunk = b""
    buf += chunk
    # no CRs and no terminal escapes (bash's bracketed-paste toggles precede a command's first line)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buf.decode(errors="replace").replace("\r", ""))
    m = re.search(rf"__B{n}__\n(.*?)__E{n}__ (\d+)\n", text, re.S)  # not the echoed "echo __B…__;"
    if m:
        sys.stdout.write(m.group(1)); sys.exit(int(m.group(2)))
sys.exit(124)
PY
}
wait_for() {  # wait_for SECONDS DESCRIPTION CMD...: poll CMD on the host until it succeeds
    local limit=$1 what=$2; shift 2
    local t0; t0=$(now)
    until "$@" >/dev/null 2>&1; do
        kill -0 "$QPID" 2>/dev/null || fail "qemu exited while waiting for $what"
        (( $(echo "$(now) - $t0 > $limit" | bc) )) && fail "no $what after ${limit}s"
        sleep 2
    done
}
login_prompt() { grep -q 'root@titus-host' "$LOG"; }
agent_active() { [ "$(guest 'systemctl show -p ActiveState --value titus-agent')" = active ]; }

wait_for 600 "console shell" login_prompt
guest 'stty -echo cols 1000' >/dev/null || true
wait_for 900 "titus-agent READY" agent_active
ready=$(echo "$(now) - $start" | bc)
echo "vm-test: titus-agent READY ${ready}s after qemu start: $(guest 'systemctl show -p StatusText --value titus-agent')"

diagnose() {  # what the scheduler and the guest say, when a job does not run
    for what in "node list" "node health --all" "job list"; do
        echo "vm-test: titusctl $what:"; "$PY" -m titusctl.main $what 2>&1 | head -20 || true
    done
    guest 'journalctl -u titus-agent -u titus-scheduler --no-pager -n 40 -o cat' || true
}
IMAGE=${TITUS_TEST_IMAGE:-127.0.0.1:5000/titus/busybox:latest}
wait_for 300 "node Ready at the scheduler" bash -c "$PY -m titusctl.main node list | grep -qw Ready"
"$PY" -m titusctl.main job submit --image "$IMAGE" --cmd 'echo hello from the vm' --wait >"$WORK/batch.out" 2>&1 \
    || { cat "$WORK/batch.out"; diagnose; fail "batch job did not finish normal"; }
echo "vm-test: batch job finished normal"
batch=$(echo "$(now) - $start" | bc)
if [ $SMOKE = 1 ]; then
    guest 'systemctl poweroff' >/dev/null || true
    down() { ! kill -0 "$QPID" 2>/dev/null; }
    wait_until_down=$(now)
    until down; do
        (( $(echo "$(now) - $wait_until_down > 120" | bc) )) && fail "the guest did not power off in 120s"
        sleep 1
    done
    wait "$QPID" 2>/dev/null && QPID= || fail "qemu exited non-zero at poweroff (timeout $LIMIT s?)"
    echo "RESULT vm-smoke firmware=$FIRMWARE boot_to_ready_s=$ready batch_normal_s=$batch total_s=$(echo "$(now) - $start" | bc) image_mb=$(( $(stat -c %s "$IMG.raw") / 1048576 ))"
    exit 0
fi
"$PY" -m titusctl.main job submit --image "$IMAGE" --cmd 'sleep 36000' --service --count 3 \
    --cpu 0.5 --memory 64 --disk 64 >/dev/null
cids() { guest "docker ps -q --no-trunc --filter label=titus.task_id | sort"; }
three_running() { [ "$(cids | wc -l)" = 3 ]; }
wait_for 900 "3 service task containers" three_running
before=$(cids)
pids() { guest "docker inspect -f '{{.Id}} {{.State.Pid}}' \$(docker ps -q --filter label=titus.task_id) | sort"; }
echo "vm-test: 3 service task containers running"
adopted() {  # adopted N: the running agent re-adopted N containers at its start
    guest "python3 -c \"import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:7101/metrics').read().decode())\" | grep '^titus_agent_adopted_total'" \
        | grep -q "^titus_agent_adopted_total $1"
}

restarts() { guest 'systemctl show -p NRestarts --value titus-agent'; }
r0=$(restarts)
guest 'systemctl kill -s SIGSTOP titus-agent' >/dev/null
t0=$(now)
restarted() { [ "$(restarts)" -gt "$r0" ] && agent_active; }
wait_for 600 "watchdog restart" restarted
wd=$(echo "$(now) - $t0" | bc)
guest 'journalctl -u titus-agent --no-pager | grep -m1 -i watchdog' || true
[ "$(cids)" = "$before" ] || fail "containers changed across the watchdog restart"
wait_for 300 "re-adoption after the watchdog restart" adopted 3.0
echo "vm-test: watchdog restart ${wd}s after SIGSTOP (WatchdogSec=30, RestartSec=2), same 3 containers re-adopted"

p0=$(pids)
t0=$(now)
guest 'systemctl restart docker' >/dev/null
dr=$(echo "$(now) - $t0" | bc)
[ "$(pids)" = "$p0" ] || fail "the tasks' processes did not survive systemctl restart docker: $(pids) vs $p0"
echo "vm-test: systemctl restart docker took ${dr}s; the 3 tasks' processes kept running (same ids and PIDs, live-restore)"

old_pid=$(guest 'systemctl show -p MainPID --value titus-agent')
t0=$(now)
guest 'dpkg -i --force-confold /var/lib/titus-upgrade/titus-node.deb >/tmp/upgrade.log 2>&1' \
    || fail "dpkg -i of N+1 failed: $(guest 'tail -5 /tmp/upgrade.log')"
upgraded() { agent_active && [ "$(guest 'systemctl show -p MainPID --value titus-agent')" != "$old_pid" ]; }
wait_for 600 "the agent restarted by the upgrade" upgraded
wait_for 300 "re-adoption after the upgrade" adopted 3.0
up=$(echo "$(now) - $t0" | bc)
version=$(guest "dpkg-query -W -f '\${Version}' titus-node")
[ "$(pids)" = "$p0" ] || fail "the tasks' processes changed across the upgrade"
echo "vm-test: upgraded to $version in ${up}s (dpkg -i to re-adoption): same 3 containers and PIDs re-adopted"
echo "vm-test: $(guest 'systemctl show -p StatusText --value titus-agent')"
guest 'systemctl poweroff' >/dev/null || true
echo "RESULT vm firmware=$FIRMWARE boot_to_ready_s=$ready watchdog_restart_s=$wd docker_restart_s=$dr upgrade_readopt_s=$up image_mb=$(( $(stat -c %s "$IMG.raw") / 1048576 ))"
