#!/usr/bin/env bash
# Run the one-host platform in the foreground: titus-scheduler, then
# titus-agent once the scheduler answers /healthz. Output of both goes to this
# terminal, each line prefixed with [scheduler] / [agent].
#
# Ctrl-C / SIGTERM / SIGHUP: SIGTERM to the agent, then the scheduler, wait
# for each (SIGKILL after TITUS_STOP_TIMEOUT s), exit 0.
# If either process dies on its own: stop the other, exit non-zero.
#
# Expects scripts/setup-host.sh and scripts/venv.sh to have run (`make run`
# does both first).
#
# Environment (defaults in brackets):
#   TITUS_BIN_DIR             [<repo>/.venv/bin]
#   TITUS_SCHEDULER_LISTEN    [127.0.0.1:7100]
#   TITUS_SCHEDULER_URL       [https://<scheduler listen address>]
#   TITUS_PKI                 [/var/lib/titus/pki] the cell CA (created if absent; docs/trust.md)
#   TITUS_INSECURE            [0]  1: plain HTTP without authentication (--insecure)
#   TITUS_SCHEDULER_DB        [/var/lib/titus/scheduler.db]
#   TITUS_SCHEDULER_ARGS      extra arguments for titus-scheduler (word-split)
#   TITUS_AGENT_LISTEN        [127.0.0.1:7101]
#   TITUS_AGENT_STATE_DIR     [/var/lib/titus/agent]
#   TITUS_NODE_ID             [$(hostname)]
#   TITUS_AGENT_ARGS          extra arguments for titus-agent (word-split)
#   TITUS_TEST_IMAGE          [127.0.0.1:5000/titus/busybox:latest] (banner only)
#   TITUS_START_TIMEOUT       [30]  seconds to wait for each process to answer
#   TITUS_STOP_TIMEOUT        [20]  seconds to wait after SIGTERM
#   TITUS_PREFIX_OUTPUT       [1]   0: do not prefix output lines
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

BIN_DIR=${TITUS_BIN_DIR:-$REPO_ROOT/.venv/bin}
SCHEDULER_LISTEN=${TITUS_SCHEDULER_LISTEN:-127.0.0.1:7100}
SCHEDULER_DB=${TITUS_SCHEDULER_DB:-/var/lib/titus/scheduler.db}
AGENT_LISTEN=${TITUS_AGENT_LISTEN:-127.0.0.1:7101}
AGENT_STATE_DIR=${TITUS_AGENT_STATE_DIR:-/var/lib/titus/agent}
NODE_ID=${TITUS_NODE_ID:-$(hostname)}
TEST_IMAGE=${TITUS_TEST_IMAGE:-127.0.0.1:5000/titus/busybox:latest}
START_TIMEOUT=${TITUS_START_TIMEOUT:-30}
STOP_TIMEOUT=${TITUS_STOP_TIMEOUT:-20}
PREFIX_OUTPUT=${TITUS_PREFIX_OUTPUT:-1}
read -r -a SCHEDULER_EXTRA <<<"${TITUS_SCHEDULER_ARGS:-}"
read -r -a AGENT_EXTRA <<<"${TITUS_AGENT_ARGS:-}"

# A wildcard listen address is reached through loopback.
connect_addr() {
    case $1 in
        0.0.0.0:* | :*) echo "127.0.0.1:${1##*:}" ;;
        "[::]:"*) echo "[::1]:${1##*:}" ;;
        *) echo "$1" ;;
    esac
}
PKI=${TITUS_PKI:-/var/lib/titus/pki}
INSECURE=${TITUS_INSECURE:-0}
if [ "$INSECURE" = 1 ]; then SCHEME=http; else SCHEME=https; fi
SCHEDULER_URL=${TITUS_SCHEDULER_URL:-$SCHEME://$(connect_addr "$SCHEDULER_LISTEN")}
AGENT_URL=http://$(connect_addr "$AGENT_LISTEN")

say() { printf 'run-local: %s\n' "$*" >&2; }
die() { printf 'run-local: ERROR: %s\n' "$*" >&2; exit 1; }

# ------------------------------------------------------------ checks -------

for b in titus-scheduler titus-agent titusctl; do
    [ -x "$BIN_DIR/$b" ] || die "$BIN_DIR/$b not found: run 'make setup' (or scripts/venv.sh) first"
done
command -v curl >/dev/null 2>&1 || die "curl not found: run scripts/setup-host.sh first"
[ "$(id -u)" -eq 0 ] || say "warning: not root; the agent needs root for docker, cgroups and netns"
if ! timeout 10 docker info >/dev/null 2>&1; then
    say "warning: 'docker info' fails; run scripts/setup-host.sh (or 'make run')"
fi

CURL_TLS=()
[ "$INSECURE" = 1 ] || CURL_TLS=(--cacert "$PKI/ca.crt")
scheduler_healthy() { curl -sf -o /dev/null --max-time 2 "${CURL_TLS[@]}" "$SCHEDULER_URL/healthz"; }
# Any HTTP answer means the agent's API is up (/healthz is 503 while docker
# does not answer, which the agent itself reports).
agent_answers() { curl -s -o /dev/null --max-time 2 "$AGENT_URL/healthz"; }

if curl -sk -o /dev/null --max-time 2 "$SCHEDULER_URL/"; then
    die "something already answers at $SCHEDULER_URL (another titus-scheduler?)"
fi
if agent_answers; then
    die "something already answers at $AGENT_URL (another titus-agent?)"
fi

mkdir -p "$(dirname "$SCHEDULER_DB")" "$AGENT_STATE_DIR"

# ------------------------------------------------------------ trust --------
# The cell CA once; a fresh one-time bootstrap token for this node at every run (the agent uses it
# only when it has no valid certificate yet).
SCHEDULER_TRUST=(--insecure)
AGENT_TRUST=()
if [ "$INSECURE" != 1 ]; then
    if [ ! -e "$PKI/ca.key" ]; then
        "$BIN_DIR/titus-scheduler" ca init --pki "$PKI" >/dev/null
        say "created the cell CA in $PKI"
    fi
    TOKEN_FILE="$PKI/bootstrap-$NODE_ID.token"
    (umask 077 && "$BIN_DIR/titus-scheduler" token create --db "$SCHEDULER_DB" --nodes "$NODE_ID" --ttl 1h >"$TOKEN_FILE")
    SCHEDULER_TRUST=(--pki "$PKI")
    AGENT_TRUST=(--scheduler-ca "$PKI/ca.crt" --bootstrap-token-file "$TOKEN_FILE")
else
    say "warning: TITUS_INSECURE=1: plain HTTP, no authentication"
fi

# ------------------------------------------------------- processes ---------

export PYTHONUNBUFFERED=1
SCHEDULER_PID=""
AGENT_PID=""

# start NAME CMD...: start CMD in the background, output to this terminal.
# Sets STARTED_PID. CMD runs in its own session, so a Ctrl-C on the terminal
# reaches only this script, which then stops the processes in order with one
# SIGTERM each (the agent first). (No job control in a script: the background
# subshell is no process group leader, so setsid(1) does not fork and $! is
# CMD's pid.)
start() {
    local name=$1
    shift
    if [ "$PREFIX_OUTPUT" = 1 ]; then
        setsid "$@" </dev/null > >(
            trap '' INT TERM HUP
            exec sed -u "s/^/[$name] /"
        ) 2>&1 &
    else
        setsid "$@" </dev/null &
    fi
    STARTED_PID=$!
    say "started $name (pid $STARTED_PID): $*"
}

alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }

# stop NAME PID: SIGTERM, wait up to STOP_TIMEOUT, then SIGKILL.
stop() {
    local name=$1 pid=$2 rc=0 deadline
    [ -n "$pid" ] || return 0
    if alive "$pid"; then
        say "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        deadline=$((SECONDS + STOP_TIMEOUT))
        while alive "$pid" && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
        if alive "$pid"; then
            say "$name did not stop within ${STOP_TIMEOUT}s, sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || rc=$?
    say "$name exited (status $rc)"
}

stop_all() {
    trap '' INT TERM HUP
    stop agent "$AGENT_PID"
    AGENT_PID=""
    stop scheduler "$SCHEDULER_PID"
    SCHEDULER_PID=""
}

on_signal() {
    echo >&2
    say "got SIG$1, shutting down"
    stop_all
    exit 0
}
trap 'on_signal INT' INT
trap 'on_signal TERM' TERM
trap 'on_signal HUP' HUP
# Whatever happens (set -e, die), leave no process behind.
trap 'stop_all' EXIT

# died NAME PID: report a process that exited on its own, stop the rest.
died() {
    local name=$1 pid=$2 rc=0
    wait "$pid" 2>/dev/null || rc=$?
    say "$name (pid $pid) exited with status $rc; stopping the rest"
    [ "$name" = agent ] && AGENT_PID="" || SCHEDULER_PID=""
    stop_all
    [ "$rc" -ne 0 ] || rc=1
    exit "$rc"
}

# wait_ready NAME PID CHECK: until CHECK succeeds; die if PID exits.
wait_ready() {
    local name=$1 pid=$2 check=$3 deadline=$((SECONDS + START_TIMEOUT))
    until "$check"; do
        alive "$pid" || died "$name" "$pid"
        if [ "$SECONDS" -ge "$deadline" ]; then
            return 1
        fi
        sleep 0.2
    done
}

start scheduler "$BIN_DIR/titus-scheduler" \
    --listen "$SCHEDULER_LISTEN" --db "$SCHEDULER_DB" "${SCHEDULER_TRUST[@]}" "${SCHEDULER_EXTRA[@]}"
SCHEDULER_PID=$STARTED_PID
wait_ready scheduler "$SCHEDULER_PID" scheduler_healthy ||
    die "scheduler did not answer $SCHEDULER_URL/healthz within ${START_TIMEOUT}s"
say "scheduler is healthy at $SCHEDULER_URL"

start agent "$BIN_DIR/titus-agent" \
    --scheduler "$SCHEDULER_URL" --listen "$AGENT_LISTEN" \
    --state-dir "$AGENT_STATE_DIR" --node-id "$NODE_ID" "${AGENT_TRUST[@]}" "${AGENT_EXTRA[@]}"
AGENT_PID=$STARTED_PID
wait_ready agent "$AGENT_PID" agent_answers ||
    say "warning: agent does not answer at $AGENT_URL yet (still running, carrying on)"

rel_bin=$BIN_DIR
[ "${BIN_DIR#"$REPO_ROOT"/}" != "$BIN_DIR" ] && rel_bin=${BIN_DIR#"$REPO_ROOT"/}
# titusctl reads the scheduler address from TITUS_SCHEDULER (or --scheduler).
ctl="$rel_bin/titusctl"
[ "$SCHEDULER_URL" = https://127.0.0.1:7100 ] || ctl="TITUS_SCHEDULER=$SCHEDULER_URL $ctl"
[ "$PKI" = /var/lib/titus/pki ] || [ "$INSECURE" = 1 ] || ctl="TITUS_PKI=$PKI $ctl"
agent_health=$(curl -s --max-time 2 "$AGENT_URL/healthz" 2>/dev/null || true)
cat >&2 <<EOF

=====================================================================
 titus-node is running on this host
   scheduler  $SCHEDULER_URL  pid $SCHEDULER_PID  db $SCHEDULER_DB
   agent      $AGENT_URL  pid $AGENT_PID  node-id $NODE_ID
              state $AGENT_STATE_DIR  healthz ${agent_health:-?}
 titusctl authenticates with $PKI/admin.crt (role admin) and verifies the
 scheduler with $PKI/ca.crt (TITUS_PKI; or TITUS_CA, TITUS_CERT/TITUS_KEY, TITUS_TOKEN)
 Submit a first job from another terminal (in $REPO_ROOT):
   $ctl job submit --image $TEST_IMAGE --cmd 'echo hello'
   $ctl task list
 Ctrl-C stops both.
=====================================================================

EOF

# Sleep until a process exits (or a signal's trap runs and exits).
while :; do
    wait -n "$SCHEDULER_PID" "$AGENT_PID" 2>/dev/null || true
    if ! alive "$AGENT_PID"; then died agent "$AGENT_PID"; fi
    if ! alive "$SCHEDULER_PID"; then died scheduler "$SCHEDULER_PID"; fi
done
