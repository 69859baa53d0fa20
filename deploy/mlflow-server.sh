#!/usr/bin/env bash
# An MLflow tracking server on 127.0.0.1 only, for sweeps that log to `tracking.uri: http://127.0.0.1:5000`.
#
#   deploy/mlflow-server.sh start  [--root DIR] [--port P] [--backend-store-uri URI | --backend-store-uri-file FILE]
#                                  [--artifacts DIR|URI] [--workers N] [--credentials-file FILE] [--dry-run]
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
# Authentication: always on (MLflow's basic-auth app, `--app-name basic-auth`). The admin user's name and
# password come from a credentials file only you can read (mode 0600; the script refuses a file that group or
# others can read): --credentials-file FILE, else $MLFLOW_CREDENTIALS_FILE, else ~/.mlflow/credentials, in the
# format of MLflow's own client credentials file, which MLflow clients of the same user read by themselves:
#     [mlflow]
#     mlflow_tracking_username = admin
#     mlflow_tracking_password = <a long random password>
# Create it with: mkdir -p ~/.mlflow && (umask 077; printf '[mlflow]\nmlflow_tracking_username = admin\nmlflow_tracking_password = %s\n' "$(openssl rand -hex 24)" > ~/.mlflow/credentials)
# The admin is created on the first start against an empty user store (<root>/basic_auth.db, SQLite on the
# local disk); later changes of the file do not change its password (MLflow's update-password API does).
# The server answers only the Host names 127.0.0.1:PORT and localhost:PORT (--allowed-hosts, exact names).
# Plain HTTP on loopback: put a TLS reverse proxy in front for anything else (deploy/README.md).
# --dry-run: the checks, then print the server's command line instead of starting it.
#
# `stop` ends only the server this script started, by the PID recorded in <root>/mlflow-server-<port>.pid.
set -euo pipefail

HOST=127.0.0.1 # never another address: the server speaks plain HTTP (TLS: a reverse proxy, deploy/README.md)
PYTHON=${PYTHON:-python3}
ROOT=${FROST_HOME:-frost-runs}
PORT=5000
BACKEND_URI=${MLFLOW_BACKEND_STORE_URI:-}
BACKEND_URI_FILE=""
ARTIFACTS=""
WORKERS=1
START_TIMEOUT=${MLFLOW_START_TIMEOUT:-120}
CREDENTIALS_FILE=${MLFLOW_CREDENTIALS_FILE:-${HOME:-}/.mlflow/credentials}
DRY_RUN=0

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
        if [[ $1 == --dry-run ]]; then
            DRY_RUN=1
            shift
            continue
        fi
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
            --credentials-file) CREDENTIALS_FILE=$2 ;;
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
    AUTH_CONFIG=$ROOT/basic_auth.ini
}

# A URI with a password: SCHEME://USER:PASSWORD@HOST..., or a password as a query parameter
# (...?password=... or &password=..., which libpq and SQLAlchemy accept too; sslpassword likewise).
has_password() {
    local query='[?&](ssl)?password='
    [[ $1 =~ ://[^/@]*:[^/@]*@ || ${1,,} =~ $query ]]
}

# The file's mode must give its group and others nothing, and it must be the caller's own.
check_private_file() {
    local what=$1 file=$2 mode
    mode=$(stat -L -c %a "$file")
    ((8#$mode & 8#077)) && die "$what $file is readable by others (mode $mode: group or other bits set): chmod 600 $file"
    [[ $(stat -L -c %u "$file") == "$(id -u)" ]] || die "$what $file belongs to another user"
    return 0
}

# The admin's name and password from the credentials file (MLflow's client format, see the top).
read_credentials_file() {
    local file=$1 line key value
    [[ -f $file ]] || die "no credentials file $file (MLflow's authentication is on): create it as --help shows, or give --credentials-file FILE"
    check_private_file "credentials file" "$file"
    ADMIN_USERNAME="" ADMIN_PASSWORD=""
    while IFS= read -r line || [[ -n $line ]]; do
        [[ $line =~ ^[[:space:]]*([a-z_]+)[[:space:]]*[=:][[:space:]]*(.*[^[:space:]])[[:space:]]*$ ]] || continue
        key=${BASH_REMATCH[1]} value=${BASH_REMATCH[2]}
        case $key in
            mlflow_tracking_username) ADMIN_USERNAME=$value ;;
            mlflow_tracking_password) ADMIN_PASSWORD=$value ;;
        esac
    done <"$file"
    [[ -n $ADMIN_USERNAME && -n $ADMIN_PASSWORD ]] || die "credentials file $file lacks mlflow_tracking_username or mlflow_tracking_password"
}

# The backend URI from a file that only its owner can read (it may hold the database password).
read_uri_file() {
    local file=$1 uri
    [[ -f $file ]] || die "--backend-store-uri-file $file: no such file"
    check_private_file --backend-store-uri-file "$file"
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
    local uri=${1:-$BACKEND_URI} path fstype
    [[ $uri == sqlite:* ]] || return 0
    path=${uri#sqlite:///}
    [[ $path == /* ]] || path=$PWD/$path
    fstype=$(findmnt -n -o FSTYPE -T "$(dirname "$path")" 2>/dev/null || stat -f -c %T "$(dirname "$path")")
    ! is_network_fs "$fstype" || die "the SQLite store $path is on a network file system ($fstype): use PostgreSQL (--backend-store-uri-file) or a local --root"
}

# The URI and the admin's credentials go through the environment (mlflow reads MLFLOW_BACKEND_STORE_URI and
# MLFLOW_AUTH_ADMIN_*), never the process arguments. Authentication on, the exact Host names it answers.
server_command() {
    export MLFLOW_BACKEND_STORE_URI=$BACKEND_URI
    export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
    export MLFLOW_AUTH_CONFIG_PATH=${MLFLOW_AUTH_CONFIG_PATH:-$AUTH_CONFIG}
    export MLFLOW_AUTH_ADMIN_USERNAME=$ADMIN_USERNAME MLFLOW_AUTH_ADMIN_PASSWORD=$ADMIN_PASSWORD
    # Signs the auth app's CSRF tokens; the same in every worker of this server, new at each start.
    MLFLOW_FLASK_SERVER_SECRET_KEY=${MLFLOW_FLASK_SERVER_SECRET_KEY:-$(od -vAn -N32 -tx1 /dev/urandom | tr -d ' \n')}
    export MLFLOW_FLASK_SERVER_SECRET_KEY
    SERVER=(mlflow server --host "$HOST" --port "$PORT" --app-name basic-auth
        --allowed-hosts "$HOST:$PORT,localhost:$PORT" --workers "$WORKERS"
        --serve-artifacts --artifacts-destination "$ARTIFACTS")
}

# The basic-auth app's configuration: its user store in SQLite beside the server's files, on a local disk.
write_auth_config() {
    [[ -z ${MLFLOW_AUTH_CONFIG_PATH:-} ]] || return 0
    (
        umask 077
        printf '[mlflow]\ndefault_permission = NO_PERMISSIONS\ndatabase_uri = sqlite:///%s/basic_auth.db\n%s\n' \
            "$ROOT" "authorization_function = mlflow.server.auth:authenticate_request_basic_auth" >"$AUTH_CONFIG"
    )
}

prepare() {
    read_credentials_file "$CREDENTIALS_FILE"
    if ((DRY_RUN)); then
        return 0
    fi
    mkdir -p "$ROOT"
    [[ $ARTIFACTS == *://* ]] || mkdir -p "$ARTIFACTS"
    check_sqlite_is_local
    check_sqlite_is_local "sqlite:///$ROOT/basic_auth.db"
    write_auth_config
    command -v mlflow >/dev/null || die "mlflow not on PATH: activate the project's venv"
}

# --dry-run: what would run (the command line; the environment's names, not its values).
print_command() {
    echo "environment: MLFLOW_BACKEND_STORE_URI MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false MLFLOW_AUTH_CONFIG_PATH=$MLFLOW_AUTH_CONFIG_PATH MLFLOW_AUTH_ADMIN_USERNAME MLFLOW_AUTH_ADMIN_PASSWORD MLFLOW_FLASK_SERVER_SECRET_KEY"
    echo "command: ${SERVER[*]}"
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
    if ((DRY_RUN)); then
        print_command
        return 0
    fi
    exec "${SERVER[@]}"
}

cmd_start() {
    prepare
    if ((DRY_RUN)); then
        server_command
        print_command
        return 0
    fi
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
