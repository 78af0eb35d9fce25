#!/usr/bin/env bash
# The MLflow tracking server of a search cluster, in the foreground (the caller backgrounds or supervises it).
#
# Reachable by the cluster's nodes and nobody else: it listens on every interface of this node (--host 0.0.0.0)
# so Ray workers reach it over the cluster network; it answers only requests whose Host header names this node,
# localhost or DCELL_MLFLOW_ALLOWED_HOSTS (--allowed-hosts, against DNS rebinding); and MLflow's basic-auth app
# asks every client for a user and password. Keep the port closed to the internet (security group, firewall,
# NetworkPolicy) and browse the UI through an SSH tunnel or kubectl port-forward (docs/cluster.md). Artifacts are
# proxied through the server, so trials need no storage credentials.
#
# usage: mlflow_server.sh BACKEND_URI ARTIFACTS_DESTINATION AUTH_DB_URI [PORT]
#   BACKEND_URI            runs and metrics: postgresql://mlflow:PASSWORD@HOST:5432/mlflow (sqlite:////path/mlflow.db
#                          for one server process)
#   ARTIFACTS_DESTINATION  s3://bucket/mlflow, gs://bucket/mlflow or a directory
#   AUTH_DB_URI            the basic-auth app's users: postgresql://.../mlflow_auth or sqlite:////path/auth.db
#   PORT                   default 5000
# environment:
#   MLFLOW_AUTH_ADMIN_PASSWORD  the password of the user "admin", created on the first start (required then)
#   MLFLOW_FLASK_SERVER_SECRET_KEY  the key of the UI's CSRF tokens, the same for every server process (default:
#                               generated once and kept in DCELL_MLFLOW_DIR)
#   DCELL_MLFLOW_DIR            where basic_auth.ini is written (default ~/.dcell-mlflow)
#   DCELL_MLFLOW_ALLOWED_HOSTS  more Host headers to accept, comma-separated (a Kubernetes Service name ...)
#   DCELL_MLFLOW_WORKERS        server processes (default 4; 1 with a sqlite backend)
#   MLFLOW                      the mlflow command (default: mlflow on PATH)
set -euo pipefail
if [ $# -lt 3 ] || [ $# -gt 4 ]; then
    echo "usage: $0 BACKEND_URI ARTIFACTS_DESTINATION AUTH_DB_URI [PORT]   (see the comment at the top)" >&2
    exit 2
fi
backend=$1
artifacts=$2
auth_db=$3
port=${4:-5000}
dir=${DCELL_MLFLOW_DIR:-$HOME/.dcell-mlflow}
mkdir -p "$dir"
chmod 700 "$dir"

node_ip=$(hostname -I | awk '{print $1}')  # this node's address on the cluster network
allowed="$node_ip:$port,$(hostname):$port,localhost:$port,127.0.0.1:$port"
if [ -n "${DCELL_MLFLOW_ALLOWED_HOSTS:-}" ]; then
    allowed="$allowed,$DCELL_MLFLOW_ALLOWED_HOSTS"
fi

# default_permission READ: a user sees every experiment and edits only the ones it created (or is granted).
(umask 077 && cat > "$dir/basic_auth.ini" <<INI
[mlflow]
default_permission = READ
database_uri = $auth_db
admin_username = admin
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
)
export MLFLOW_AUTH_CONFIG_PATH="$dir/basic_auth.ini"
if [ -z "${MLFLOW_FLASK_SERVER_SECRET_KEY:-}" ]; then
    if [ ! -s "$dir/flask_secret_key" ]; then
        (umask 077 && openssl rand -hex 32 > "$dir/flask_secret_key")
    fi
    MLFLOW_FLASK_SERVER_SECRET_KEY=$(cat "$dir/flask_secret_key")
fi
export MLFLOW_FLASK_SERVER_SECRET_KEY
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false  # no job runner: about 0.5 GB instead of 2.4 GB

exec "${MLFLOW:-mlflow}" server --app-name basic-auth --host 0.0.0.0 --port "$port" \
    --backend-store-uri "$backend" --artifacts-destination "$artifacts" \
    --allowed-hosts "$allowed" --workers "${DCELL_MLFLOW_WORKERS:-4}"
