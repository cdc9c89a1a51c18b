#!/usr/bin/env bash
# Start the MLflow tracking server that training runs (rank 0 of each job) log to, and print the URI to use.
#
#   launch/mlflow_server.sh [--unauthenticated] [ROOT]   # ROOT holds the sqlite database and the artifacts
#                                                         # (default ./mlflow_server)
#
# Anything but a loopback MLFLOW_HOST exposes every run, model and artifact to whoever reaches the port, and lets
# them write and delete: the script refuses that unless the server authenticates (MLFLOW_APP_NAME=basic-auth) or
# --unauthenticated says the network is trusted (or a proxy in front authenticates); it warns either way.
#
# Environment (all optional):
#   MLFLOW_HOST                 address to bind (default 127.0.0.1: this machine only). Use 0.0.0.0, or this node's
#                               cluster address, so that training on other nodes can reach it (with
#                               MLFLOW_APP_NAME=basic-auth, or --unauthenticated: see above).
#   MLFLOW_APP_NAME             basic-auth: MLflow's username/password login for the UI, API and artifacts (needs
#                               `pip install 'mlflow[auth]'`; admin account and user store set in the file named by
#                               MLFLOW_AUTH_CONFIG_PATH). Training ranks then read their login from
#                               ~/.mlflow/credentials ([mlflow] mlflow_tracking_username / mlflow_tracking_password).
#   MLFLOW_PORT                 port (default 5000)
#   MLFLOW_BACKEND_STORE_URI    runs/params/metrics store (default sqlite:///ROOT/mlflow.db); for many concurrent jobs
#                               use a database server, e.g. postgresql://user@dbhost/mlflow (password in ~/.pgpass,
#                               not on the command line)
#   MLFLOW_ARTIFACTS_DESTINATION  where uploaded artifacts are stored (default ROOT/mlartifacts; s3://bucket/prefix
#                               works too). Clients upload through the server, so they need no storage credentials.
#   MLFLOW_ALLOWED_HOSTS        Host headers the server accepts (MLflow 3 refuses others to stop DNS rebinding).
#                               Default: localhost, this node's names and addresses, each with any port.
#   MLFLOW_CORS_ORIGINS         only for other web apps calling the API from a browser (the UI itself needs nothing)
#   MLFLOW_WORKERS              server worker processes (default 1 with sqlite, which takes one writer at a time; 4 else)
#
# Then, on every node that trains:  export MLFLOW_TRACKING_URI=<the URI printed below>
# and, once per experiment:         python -m xlsr_dist.reference   (imports the reference model card's results)
set -euo pipefail

UNAUTHENTICATED=""
if [[ ${1:-} == --unauthenticated ]]; then UNAUTHENTICATED=1; shift; fi
HOST=${MLFLOW_HOST:-127.0.0.1}
APP_NAME=${MLFLOW_APP_NAME:-}
if [[ ! $HOST =~ ^(127\.[0-9.]+|localhost|::1)$ && -z $APP_NAME ]]; then
  echo "WARNING: MLFLOW_HOST=$HOST serves runs, models and artifacts to anyone who reaches port" \
       "${MLFLOW_PORT:-5000}, with no login: they can read, change and delete them." >&2
  if [[ -z $UNAUTHENTICATED ]]; then
    echo "error: refusing to serve without authentication on $HOST. Set MLFLOW_APP_NAME=basic-auth (MLflow's" \
         "login), or pass --unauthenticated if only trusted machines reach this port (or a proxy in front" \
         "authenticates), or bind MLFLOW_HOST=127.0.0.1 and tunnel (ssh -L)." >&2
    exit 2
  fi
fi

ROOT=$(mkdir -p "${1:-${MLFLOW_ROOT:-$PWD/mlflow_server}}" && cd "${1:-${MLFLOW_ROOT:-$PWD/mlflow_server}}" && pwd)
PORT=${MLFLOW_PORT:-5000}
BACKEND=${MLFLOW_BACKEND_STORE_URI:-sqlite:///$ROOT/mlflow.db}
ARTIFACTS=${MLFLOW_ARTIFACTS_DESTINATION:-$ROOT/mlartifacts}
if [[ $BACKEND == sqlite:* ]]; then WORKERS=${MLFLOW_WORKERS:-1}; else WORKERS=${MLFLOW_WORKERS:-4}; fi

# The name other nodes should use: the bound address, or this node's fully qualified name when bound to all.
if [[ $HOST == 0.0.0.0 || $HOST == "::" ]]; then
  ADVERTISED=$(hostname -f 2>/dev/null || hostname)
else
  ADVERTISED=$HOST
fi

if [[ -z ${MLFLOW_ALLOWED_HOSTS:-} ]]; then
  names=(localhost 127.0.0.1 "$(hostname)" "$(hostname -f 2>/dev/null || hostname)" "$ADVERTISED")
  # shellcheck disable=SC2207
  names+=($(hostname -I 2>/dev/null || true))
  allowed=""
  for n in $(printf '%s\n' "${names[@]}" | awk 'NF && !seen[$0]++'); do
    allowed+="${allowed:+,}$n,$n:*"
  done
  MLFLOW_ALLOWED_HOSTS=$allowed
fi

# The job runner (GenAI judges, scheduled tasks) forks a pool of workers that training never uses.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}

MLFLOW=${MLFLOW:-mlflow}
if ! command -v "$MLFLOW" >/dev/null 2>&1; then
  echo "mlflow not found; activate the environment first (source .venv/bin/activate)" >&2
  exit 2
fi

args=(server --backend-store-uri "$BACKEND" --artifacts-destination "$ARTIFACTS" --serve-artifacts
      --host "$HOST" --port "$PORT" --workers "$WORKERS" --allowed-hosts "$MLFLOW_ALLOWED_HOSTS")
if [[ -n ${MLFLOW_CORS_ORIGINS:-} ]]; then args+=(--cors-allowed-origins "$MLFLOW_CORS_ORIGINS"); fi
if [[ -n $APP_NAME ]]; then args+=(--app-name "$APP_NAME"); fi

# Never echo a database password into a job log.
SHOWN=$(printf '%s' "$BACKEND" | sed -E 's#(://[^:/@]+):[^@/]+@#\1:***@#')
echo "MLflow server: store $SHOWN, artifacts $ARTIFACTS, listening on $HOST:$PORT"
echo "MLFLOW_TRACKING_URI=http://$ADVERTISED:$PORT"
if [[ $HOST =~ ^(127\.[0-9.]+|localhost|::1)$ ]]; then
  echo "(bound to this machine only; for training on other nodes set MLFLOW_HOST=0.0.0.0 with" \
       "MLFLOW_APP_NAME=basic-auth, or tunnel:" \
       "ssh -L $PORT:127.0.0.1:$PORT $(hostname))"
fi
exec "$MLFLOW" "${args[@]}"
