#!/usr/bin/env bash
# An MLflow tracking server on 127.0.0.1 only, for sweeps that log to `tracking.uri: http://127.0.0.1:5000`.
#
#   deploy/mlflow-server.sh start  [--root DIR] [--port P] [--backend-store-uri URI | --backend-store-uri-file FILE]
#                                  [--artifacts DIR|URI] [--workers N]
#   deploy/mlflow-server.sh run    [same flags]   (in the foreground, for systemd / tmux / a container)
#   deploy/mlflow-server.sh status [--root DIR] [--port P]
#   deploy/mlflow-server.sh stop   [--root DIR] [--port P]
#
# Defaults: the project folder (--root, else $FROST_HOME, else ./frost-runs) holds the SQLite store mlflow.db and
# the artifact folder mlartifacts/ -- the same files `frost run` writes without a server, so the server shows
# those runs too. Port 5000. The server proxies artifacts (--serve-artifacts): clients need no storage
# credentials. Its job runner stays off (MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false: a dozen idle processes).
#
# PostgreSQL: give the URI with the psycopg2 driver, postgresql+psycopg2://USER@HOST:5432/DB (SQLAlchemy 2.1
# picks psycopg 3 for a bare postgresql:// URI, and that driver is not installed). A password never goes on a
# command line, where `ps` shows it to every local user: --backend-store-uri refuses a URI with one. Put it in
# MLFLOW_BACKEND_STORE_URI (environment), in a file only you can read (--backend-store-uri-file FILE, mode
# 0600: the URI, one line) or in ~/.pgpass.
# SQLite only on a local disk: the script refuses an SQLite store on a network file system (NFS, EFS, SMB,
# CephFS, FUSE mounts...), whose locking SQLite cannot rely on; a store shared by several machines is
# PostgreSQL's job.
# S3 artifacts: --artifacts s3://BUCKET/PREFIX with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in the environment.
#
# `stop` ends only the server this script started, by the PID recorded in <root>/mlflow-server-<port>.pid.
set -euo pipefail

HOST=127.0.0.1 # never another address: the server has no authentication of its own
PYTHON=${PYTHON:-python3}
ROOT=${FROST_HOME:-frost-runs}
PORT=5000
BACKEND_URI=${MLFLOW_BACKEND_STORE_URI:-}
BACKEND_URI_FILE=""
ARTIFACTS=""
WORKERS=1
START_TIMEOUT=${MLFLOW_START_TIMEOUT:-120}

usage() {
    # The comment block at the top of this file, without its `# `.
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
    exit 2
}

die() {
    echo "mlflow-server: $*" >&2
    exit 1
}

parse_args() {
    while (($#)); do
        [[ $1 == -h || $1 == --help ]] && usage
        (($# >= 2)) || die "$1 needs a value (see --help)"
        case $1 in
            --root) ROOT=$2 ;;
            --port) PORT=$2 ;;
            --backend-store-uri)
                ! has_password "$2" || die "--backend-store-uri holds a password, which \`ps\` shows to every local user: use --backend-store-uri-file FILE (mode 0600), MLFLOW_BACKEND_STORE_URI or ~/.pgpass"
                BACKEND_URI=$2
                ;;
            --backend-store-uri-file) BACKEND_URI_FILE=$2 ;;
            --artifacts) ARTIFACTS=$2 ;;
            --workers) WORKERS=$2 ;;
            *) die "unknown argument: $1 (see --help)" ;;
        esac
        shift 2
    done
    ROOT=$(realpath -m "$ROOT")
    [[ -z $BACKEND_URI_FILE ]] || BACKEND_URI=$(read_uri_file "$BACKEND_URI_FILE")
    BACKEND_URI=${BACKEND_URI:-sqlite:///$ROOT/mlflow.db}
    ARTIFACTS=${ARTIFACTS:-$ROOT/mlartifacts}
    case $BACKEND_URI in
        postgresql://* | postgres://*)
            die "use postgresql+psycopg2://... (SQLAlchemy 2.1's default PostgreSQL driver, psycopg 3, is not installed)"
            ;;
    esac
    PIDFILE=$ROOT/mlflow-server-$PORT.pid
    LOGFILE=$ROOT/mlflow-server-$PORT.log
}

# A URI with a password: SCHEME://USER:PASSWORD@HOST...
has_password() {
    [[ $1 =~ ://[^/@]*:[^/@]*@ ]]
}

# The backend URI from a file that only its owner can read (it may hold the database password).
read_uri_file() {
    local file=$1 mode uri
    [[ -f $file ]] || die "--backend-store-uri-file $file: no such file"
    mode=$(stat -L -c %a "$file")
    ((8#$mode & 8#077)) && die "--backend-store-uri-file $file is readable by others (mode $mode): chmod 600 $file"
    read -r uri <"$file" || true
    [[ -n $uri ]] || die "--backend-store-uri-file $file is empty"
    echo "$uri"
}

# Whether a file system type (as findmnt / stat -f name it) is a network or FUSE file system.
is_network_fs() {
    case $1 in
        nfs* | cifs | smb* | ceph* | glusterfs | lustre | gpfs | beegfs | 9p | afs | ocfs2 | gfs2 | fuse*) return 0 ;;
        *) return 1 ;;
    esac
}

# SQLite's locks are unreliable on network file systems, and a database file there is shared by every
# machine that mounts it: an SQLite store must sit on a local disk.
check_sqlite_is_local() {
    local path fstype
    [[ $BACKEND_URI == sqlite:* ]] || return 0
    path=${BACKEND_URI#sqlite:///}
    [[ $path == /* ]] || path=$PWD/$path
    fstype=$(findmnt -n -o FSTYPE -T "$(dirname "$path")" 2>/dev/null || stat -f -c %T "$(dirname "$path")")
    ! is_network_fs "$fstype" || die "the SQLite store $path is on a network file system ($fstype): use PostgreSQL (--backend-store-uri-file) or a local --root"
}

# The URI goes through the environment (mlflow reads MLFLOW_BACKEND_STORE_URI), never the process arguments.
server_command() {
    export MLFLOW_BACKEND_STORE_URI=$BACKEND_URI
    export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
    SERVER=(mlflow server --host "$HOST" --port "$PORT" --workers "$WORKERS"
        --serve-artifacts --artifacts-destination "$ARTIFACTS")
}

prepare() {
    mkdir -p "$ROOT"
    [[ $ARTIFACTS == *://* ]] || mkdir -p "$ARTIFACTS"
    check_sqlite_is_local
    command -v mlflow >/dev/null || die "mlflow not on PATH: activate the project's venv"
}

live_pid() {
    local pid
    [[ -f $PIDFILE ]] || return 1
    read -r pid <"$PIDFILE"
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "server --host $HOST --port $PORT " || return 1
    echo "$pid"
}

healthy() {
    "$PYTHON" - "$HOST" "$PORT" <<'EOF'
import sys
import urllib.request

try:
    with urllib.request.urlopen(f"http://{sys.argv[1]}:{sys.argv[2]}/health", timeout=2) as response:
        sys.exit(0 if response.status == 200 else 1)
except OSError:
    sys.exit(1)
EOF
}

cmd_run() {
    prepare
    server_command
    exec "${SERVER[@]}"
}

cmd_start() {
    prepare
    ! live_pid >/dev/null || die "already running (pid $(live_pid)); stop it first: $0 stop --root $ROOT --port $PORT"
    ! (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null || die "port $PORT on $HOST is in use; pick --port"
    server_command
    # Own session: the server's worker processes share its process group, which `stop` signals.
    setsid "${SERVER[@]}" </dev/null >>"$LOGFILE" 2>&1 &
    echo "$!" >"$PIDFILE"
    local deadline=$((SECONDS + START_TIMEOUT))
    until healthy; do
        live_pid >/dev/null || { tail -n 30 "$LOGFILE" >&2; die "the server exited (log: $LOGFILE)"; }
        ((SECONDS < deadline)) || die "not healthy after ${START_TIMEOUT}s (log: $LOGFILE)"
        sleep 1
    done
    cat <<EOF
MLflow server on http://$HOST:$PORT (store: ${BACKEND_URI%%://*}, artifacts: $ARTIFACTS)
  in a sweep spec:  tracking: {uri: http://$HOST:$PORT}
  from a laptop:    ssh -L $PORT:$HOST:$PORT THIS_HOST, then open http://$HOST:$PORT
  stop:             $0 stop --root $ROOT --port $PORT
EOF
}

cmd_stop() {
    local pid
    if ! pid=$(live_pid); then
        rm -f "$PIDFILE"
        echo "no server of $ROOT is running on port $PORT"
        return 0
    fi
    [[ $pid != "$(ps -o pgid= -p $$ | tr -d ' ')" ]] || die "refusing to signal this script's own process group"
    kill -TERM -- "-$pid" 2>/dev/null || true
    for _ in $(seq 1 15); do
        kill -0 -- "-$pid" 2>/dev/null || break
        sleep 1
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
    rm -f "$PIDFILE"
    echo "stopped the MLflow server on $HOST:$PORT (pid $pid)"
}

cmd_status() {
    local pid
    if pid=$(live_pid); then
        echo "running on http://$HOST:$PORT (pid $pid, log $LOGFILE)"
    else
        echo "not running on port $PORT for $ROOT"
    fi
}

main() {
    (($#)) || usage
    local command=$1
    shift
    parse_args "$@"
    case $command in
        start) cmd_start ;;
        run) cmd_run ;;
        stop) cmd_stop ;;
        status) cmd_status ;;
        -h | --help) usage ;;
        *) die "unknown command: $command (start | run | status | stop)" ;;
    esac
}

# Run unless sourced (tests source the script to call its checks).
[[ ${BASH_SOURCE[0]} != "$0" ]] || main "$@"
