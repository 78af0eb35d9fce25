#!/usr/bin/env bash
# The head node's services on a cloud cluster (clusters/aws.yaml, clusters/gcp.yaml): PostgreSQL for MLflow's runs
# and users, generated passwords, and the MLflow server (clusters/mlflow_server.sh) in the background on port 5000.
# Idempotent: `ray up` runs it whenever it (re)starts Ray on the head, and after a reboot of the head it brings the
# server back on the same databases (PostgreSQL itself starts at boot).
#
# usage: head_services.sh ARTIFACTS_DESTINATION      (s3://bucket/mlflow or gs://bucket/mlflow)
# Secrets stay on the head, readable by its user only: ~/.dcell-mlflow/db_password and admin_password (the MLflow
# user "admin"; read it with `ray exec CLUSTER.yaml 'cat ~/.dcell-mlflow/admin_password'`).
set -euo pipefail
if [ $# -ne 1 ]; then
    echo "usage: $0 ARTIFACTS_DESTINATION   (s3://bucket/mlflow or gs://bucket/mlflow)" >&2
    exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
dir=$HOME/.dcell-mlflow
mkdir -p "$dir"
chmod 700 "$dir"
for secret in db_password admin_password; do
    if [ ! -s "$dir/$secret" ]; then
        (umask 077 && openssl rand -hex 24 > "$dir/$secret")
    fi
done
db_password=$(cat "$dir/db_password")

if ! command -v psql > /dev/null; then
    sudo apt-get update -y
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql
fi
sudo systemctl enable --now postgresql  # listens on localhost only: the MLflow server is its one client
sql() { (cd /tmp && sudo -u postgres psql -v ON_ERROR_STOP=1 -tAc "$1"); }
if [ "$(sql "SELECT 1 FROM pg_roles WHERE rolname = 'mlflow'")" != 1 ]; then
    sql "CREATE ROLE mlflow LOGIN PASSWORD '$db_password'"
fi
for db in mlflow mlflow_auth; do
    if [ "$(sql "SELECT 1 FROM pg_database WHERE datname = '$db'")" != 1 ]; then
        sql "CREATE DATABASE $db OWNER mlflow"
    fi
done

if [ -s "$dir/server.pid" ] && kill -0 "$(cat "$dir/server.pid")" 2> /dev/null; then
    kill "$(cat "$dir/server.pid")"  # one server at a time: a new `ray up` restarts it with this checkout
    sleep 3
fi
pg="postgresql://mlflow:$db_password@127.0.0.1:5432"
MLFLOW_AUTH_ADMIN_PASSWORD=$(cat "$dir/admin_password") DCELL_MLFLOW_DIR=$dir \
    nohup bash "$here/mlflow_server.sh" "$pg/mlflow" "$1" "$pg/mlflow_auth" 5000 > "$dir/server.log" 2>&1 &
echo $! > "$dir/server.pid"
echo "MLflow server starting on port 5000 (log: $dir/server.log)"
