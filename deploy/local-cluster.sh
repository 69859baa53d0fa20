#!/usr/bin/env bash
# A local multi-node Ray cluster on 127.0.0.1 only: one head and N worker nodes on this machine, each its own
# `ray start --block` process in its own session, with its own --temp-dir, token authentication on.
# Every node goes through deploy/loopback_ray.py (`ray start` with 127.0.0.1 kept as 127.0.0.1: Ray's CLI
# would otherwise swap in the host's routable address and listen on every interface). Clients need
# RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 in their environment to reach it; `start` prints the exact commands.
#
#   deploy/local-cluster.sh start  [--workers N] [--cpus N] [--port P] [--dashboard-port P] [--client-port P]
#                                  [--object-store-mb MB] [--state-dir DIR]
#   deploy/local-cluster.sh status [--port P | --state-dir DIR]
#   deploy/local-cluster.sh stop   [--port P | --state-dir DIR]
#
# `stop` ends only the processes this script started: it signals the PIDs (and their sessions) recorded
# in the state directory. It never runs `ray stop`, which would stop every Ray instance of the user.
#
# Defaults (flags win over environment variables): GCS port 6380 (6379 is Redis on these machines),
# dashboard / Jobs API 8265, Ray client 10001, 1 worker node, 1 CPU per node, state in /tmp/frost-ray-<port>.
set -euo pipefail

LOOPBACK=127.0.0.1
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PYTHON=${PYTHON:-python3} # the interpreter that has ray installed (the project's venv)
PORT=${FROST_RAY_PORT:-6380}
DASHBOARD_PORT=${FROST_RAY_DASHBOARD_PORT:-8265}
CLIENT_PORT=${FROST_RAY_CLIENT_PORT:-10001}
WORKERS=${FROST_RAY_WORKERS:-1}
CPUS=${FROST_RAY_CPUS:-1}
OBJECT_STORE_MB=${FROST_RAY_OBJECT_STORE_MB:-256}
STATE_DIR=${FROST_RAY_STATE_DIR:-}
START_TIMEOUT=${FROST_RAY_START_TIMEOUT:-120}

usage() {
    # The comment block at the top of this file, without its `# `.
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
    exit 2
}

die() {
    echo "local-cluster: $*" >&2
    exit 1
}

parse_args() {
    while (($#)); do
        [[ $1 == -h || $1 == --help ]] && usage
        (($# >= 2)) || die "$1 needs a value (see --help)"
        case $1 in
            --workers) WORKERS=$2 ;;
            --cpus) CPUS=$2 ;;
            --port) PORT=$2 ;;
            --dashboard-port) DASHBOARD_PORT=$2 ;;
            --client-port) CLIENT_PORT=$2 ;;
            --object-store-mb) OBJECT_STORE_MB=$2 ;;
            --state-dir) STATE_DIR=$2 ;;
            *) die "unknown argument: $1 (see --help)" ;;
        esac
        shift 2
    done
    # Short on purpose: Ray puts Unix sockets under <temp-dir>/session_*/sockets, and socket paths are
    # limited to 107 characters. Absolute, because `stop` recognises its processes by this path.
    STATE_DIR=$(realpath -m "${STATE_DIR:-/tmp/frost-ray-$PORT}")
    [[ $PORT != 6379 ]] || die "port 6379 is Redis on these machines; choose another --port"
}

port_busy() {
    # A TCP connect to loopback: succeeds only when something already listens there.
    (exec 3<>"/dev/tcp/$LOOPBACK/$1") 2>/dev/null
}

# The PID recorded in a .pid file, if that process is still the `ray start` we launched (not a reused PID).
live_pid() {
    local pidfile=$1 pid
    [[ -f $pidfile ]] || return 1
    read -r pid _ <"$pidfile"
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "--temp-dir $STATE_DIR/" || return 1
    echo "$pid"
}

ensure_token() {
    # Token authentication stays on: every node and every client uses the same token.
    export RAY_AUTH_MODE=token
    if [[ -z ${RAY_AUTH_TOKEN:-} && -z ${RAY_AUTH_TOKEN_PATH:-} ]]; then
        # Creates ~/.ray/auth_token once (it is never printed here); clients on this machine pick it up.
        # Ray writes it 0644, readable by every local user: the umask and the chmod keep it the operator's.
        (umask 077 && "$PYTHON" "$HERE/loopback_ray.py" get-auth-token --generate >/dev/null)
        chmod 600 "$HOME/.ray/auth_token"
    elif [[ -n ${RAY_AUTH_TOKEN_PATH:-} && -f $RAY_AUTH_TOKEN_PATH ]]; then
        chmod 600 "$RAY_AUTH_TOKEN_PATH"
    fi
}

# Start one node as `ray start --block` in its own session: its PID is the session id of every Ray process of
# that node (Ray gives its workers process groups of their own, but they stay in the session), which is what
# `stop` signals.
start_node() {
    local name=$1
    shift
    mkdir -p "$STATE_DIR/$name"
    setsid "$PYTHON" "$HERE/loopback_ray.py" start --block --disable-usage-stats \
        --node-ip-address "$LOOPBACK" \
        --temp-dir "$STATE_DIR/$name" \
        --num-cpus "$CPUS" --num-gpus 0 \
        --object-store-memory $((OBJECT_STORE_MB * 1024 * 1024)) \
        --dashboard-agent-listen-port 0 \
        --min-worker-port 0 --max-worker-port 0 \
        "$@" </dev/null >"$STATE_DIR/$name.log" 2>&1 &
    echo "$! $name" >"$STATE_DIR/$name.pid"
}

# A failed start leaves nothing running: the nodes already up are stopped again.
abort_start() {
    echo "local-cluster: $*; stopping the nodes started so far" >&2
    cmd_stop >&2
    exit 1
}

wait_started() {
    local name=$1 deadline=$((SECONDS + START_TIMEOUT))
    until grep -q "Ray runtime started" "$STATE_DIR/$name.log" 2>/dev/null; do
        if ! live_pid "$STATE_DIR/$name.pid" >/dev/null; then
            tail -n 30 "$STATE_DIR/$name.log" >&2 || true
            abort_start "$name exited during start-up (log: $STATE_DIR/$name.log)"
        fi
        ((SECONDS < deadline)) || abort_start "$name not up after ${START_TIMEOUT}s (log: $STATE_DIR/$name.log)"
        sleep 1
    done
}

cmd_start() {
    for pidfile in "$STATE_DIR"/*.pid; do
        if live_pid "$pidfile" >/dev/null; then
            die "a cluster from $STATE_DIR is already running; stop it first: $0 stop --state-dir $STATE_DIR"
        fi
    done
    for port in "$PORT" "$DASHBOARD_PORT" "$CLIENT_PORT"; do
        ! port_busy "$port" || die "port $port on $LOOPBACK is in use; pick --port/--dashboard-port/--client-port"
    done
    mkdir -p "$STATE_DIR"
    rm -f "$STATE_DIR"/*.pid
    "$PYTHON" -c "import ray" 2>/dev/null || die "$PYTHON cannot import ray: activate the project's venv or set PYTHON"
    ensure_token
    export RAY_USAGE_STATS_ENABLED=0 # nothing leaves this machine
    # Ray's own switch for "127.0.0.1 stays loopback", inherited by every process the nodes spawn.
    export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0

    start_node head --head --port "$PORT" \
        --dashboard-host "$LOOPBACK" --dashboard-port "$DASHBOARD_PORT" \
        --ray-client-server-port "$CLIENT_PORT"
    wait_started head
    for i in $(seq 1 "$WORKERS"); do
        start_node "worker-$i" --address "$LOOPBACK:$PORT"
    done
    for i in $(seq 1 "$WORKERS"); do
        wait_started "worker-$i"
    done

    cat <<EOF
Ray cluster up on $LOOPBACK:$PORT: head + $WORKERS worker node(s), $CPUS CPU(s) each, token auth on.
Clients reach it with these two variables set (without the second, Ray dials the host's routable address):
  export RAY_AUTH_MODE=token RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
  sweep:     frost run sweeps/catalog/smoke.yaml --address $LOOPBACK:$PORT
  jobs API:  ray job list --address http://$LOOPBACK:$DASHBOARD_PORT
  dashboard: http://$LOOPBACK:$DASHBOARD_PORT   (logs: $STATE_DIR/*.log)
  stop:      $0 stop --state-dir $STATE_DIR
EOF
}

# The PIDs of the processes of session $1 (a node's `ray start`, which leads its session).
session_pids() {
    pgrep -s "$1" 2>/dev/null || true
}

# SIGTERM to `ray start --block` makes it stop its node's processes; whatever is left of that node's session
# is terminated after a grace period, by PID.
stop_node() {
    local pidfile=$1 pid own_session left
    if ! pid=$(live_pid "$pidfile"); then
        rm -f "$pidfile"
        return 0
    fi
    own_session=$(ps -o sid= -p $$ | tr -d ' ')
    [[ $pid != "$own_session" ]] || die "refusing to signal this script's own session"
    echo "stopping $(basename "$pidfile" .pid) (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 30); do
        [[ -n $(session_pids "$pid") ]] || break
        sleep 1
    done
    left=$(session_pids "$pid")
    if [[ -n $left ]]; then
        # shellcheck disable=SC2086 # one PID per word
        kill -TERM $left 2>/dev/null || true
        sleep 5
        left=$(session_pids "$pid")
        # shellcheck disable=SC2086
        [[ -z $left ]] || kill -KILL $left 2>/dev/null || true
    fi
    rm -f "$pidfile"
}

cmd_stop() {
    [[ -d $STATE_DIR ]] || die "no cluster state in $STATE_DIR"
    # Workers first, so that none of them outlives the head and tries to reconnect.
    for pidfile in "$STATE_DIR"/worker-*.pid "$STATE_DIR"/head.pid; do
        [[ -e $pidfile ]] && stop_node "$pidfile"
    done
    echo "stopped the cluster of $STATE_DIR (its logs and temp dirs stay there)"
}

cmd_status() {
    local found=0 pid
    for pidfile in "$STATE_DIR"/head.pid "$STATE_DIR"/worker-*.pid; do
        [[ -e $pidfile ]] || continue
        found=1
        if pid=$(live_pid "$pidfile"); then
            echo "$(basename "$pidfile" .pid): running (pid $pid)"
        else
            echo "$(basename "$pidfile" .pid): not running"
        fi
    done
    ((found)) || echo "no cluster recorded in $STATE_DIR"
}

main() {
    (($#)) || usage
    local command=$1
    shift
    parse_args "$@"
    case $command in
        start) cmd_start ;;
        stop) cmd_stop ;;
        status) cmd_status ;;
        -h | --help) usage ;;
        *) die "unknown command: $command (start | status | stop)" ;;
    esac
}

main "$@"
