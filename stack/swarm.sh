#!/usr/bin/env bash
# Deploy the usersapi stack on Docker Swarm: on a swarm of your own, reached through a Docker
# context (SWARM_CONTEXT), or on a lab swarm of three docker-in-docker nodes it builds here.
#
#   stack/swarm.sh all              build the lab (nodes, swarm), labels, secrets, build, push,
#                                   deploy, verify; with SWARM_CONTEXT: from labels on
#   stack/swarm.sh build push deploy several steps, in order, stopping at the first failure
#   stack/swarm.sh backup | restore FILE | drill   the database (stack/backup.sh)
#   stack/swarm.sh api-key NAME read|write | api-key --revoke NAME   API keys (stack/keys.sh)
#   stack/swarm.sh down [--purge]   remove the stack (and the lab); --purge: the data too
#   stack/swarm.sh help             every step and every setting with its default
#
# One code path for both: every swarm operation goes through one Docker endpoint, the context
# SWARM_CONTEXT names or, in the lab, the context `nodes` makes for the lab's manager. What must
# run next to the database or inside the stack's networks runs as short-lived services placed
# on that manager (stack/tasks.sh). Every setting is an environment variable with a default
# (see `help`); every step can run again safely.
set -euo pipefail
shopt -s inherit_errexit  # a $(...) stops at its first failure too

STACK_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROJECT_DIR=$(dirname "$STACK_DIR")

project_version() {  # __version__ in usersapi.py, the one place it is written
  sed -n 's/^__version__ *= *"\([^"]*\)".*/\1/p' "$PROJECT_DIR/usersapi.py" 2>/dev/null | head -n 1
}

in_project() {  # a relative path is taken from the repository's root, whatever the current directory
  case $1 in /*) printf '%s' "$1" ;; *) printf '%s/%s' "$PROJECT_DIR" "$1" ;; esac
}

# --- settings ------------------------------------------------------------------------------
STACK_NAME=${STACK_NAME:-semana4}
SWARM_CONTEXT=${SWARM_CONTEXT:-}  # empty: the lab swarm that `nodes` and `swarm` build here
VERSION_SET=${VERSION:+1}  # deploy without VERSION (nor API_IMAGE) keeps the running image
VERSION=${VERSION:-$(project_version)}
VERSION=${VERSION:-1.0.0}
# No default account: nobody pushes to, or pulls from, an account they do not own.
DOCKERHUB_USER=${DOCKERHUB_USER:-}
REGISTRY=${REGISTRY:-${DOCKERHUB_USER:+docker.io/$DOCKERHUB_USER}}
IMAGE_NAME=${IMAGE_NAME:-usersapi}
API_IMAGE_SET=${API_IMAGE:+1}
API_IMAGE=${API_IMAGE:-${REGISTRY:+$REGISTRY/$IMAGE_NAME:$VERSION}}
API_REPLICAS=${API_REPLICAS:-2}
BASE_IMAGE=${BASE_IMAGE:-python:3.13-slim}
# The lab: three docker-in-docker nodes on this machine (stack/lab.sh).
DIND_IMAGE=${DIND_IMAGE:-docker:27-dind}
DIND_RUN_OPTS=${DIND_RUN_OPTS:---privileged}
NODE_PREFIX=${NODE_PREFIX:-$STACK_NAME}
NODE_NETWORK=${NODE_NETWORK:-$STACK_NAME-nodes}
LAB_MANAGER=$NODE_PREFIX-manager
LAB_WORKER1=$NODE_PREFIX-worker1
LAB_WORKER2=$NODE_PREFIX-worker2
# The nodes, as `docker node ls` names them; in the lab, the lab's nodes.
if [ -z "$SWARM_CONTEXT" ]; then
  DATABASE_NODE=${DATABASE_NODE:-$LAB_MANAGER}
  INGRESS_NODE=${INGRESS_NODE:-$LAB_WORKER1}
  API_NODE=${API_NODE:-$LAB_WORKER2}
else
  DATABASE_NODE=${DATABASE_NODE:-}
  INGRESS_NODE=${INGRESS_NODE:-}
  API_NODE=${API_NODE:-}
fi
PUBLIC_HOST=${PUBLIC_HOST:-localhost}  # the ingress node's address, as clients reach it
HTTP_PORT=${HTTP_PORT:-80}
HTTPS_PORT=${HTTPS_PORT:-443}
SECRETS_DIR=$(in_project "${SECRETS_DIR:-stack/.secrets}")
MONGO_ROOT_USER=${MONGO_ROOT_USER:-root}
MONGO_APP_USER=${MONGO_APP_USER:-usersapi}
MONGO_BACKUP_USER=${MONGO_BACKUP_USER:-usersapi_backup}
MONGO_DB=${MONGO_DB:-usersdb}
BACKUP_DIR=$(in_project "${BACKUP_DIR:-backups}")
TLS_DAYS=${TLS_DAYS:-365}
# Your own certificate for the ingress instead of the self-signed one in SECRETS_DIR: PEM
# files, the certificate's may carry its chain (fullchain.pem). Both or neither.
TLS_CERT_FILE=${TLS_CERT_FILE:+$(in_project "$TLS_CERT_FILE")}
TLS_KEY_FILE=${TLS_KEY_FILE:+$(in_project "$TLS_KEY_FILE")}
# The ingress's limits per client address (stack/nginx.conf): requests a second, requests
# served at once on top of them, requests in flight.
RATE_LIMIT=${RATE_LIMIT:-20}
RATE_BURST=${RATE_BURST:-40}
CONN_LIMIT=${CONN_LIMIT:-32}
WAIT_TIMEOUT=${WAIT_TIMEOUT:-300}
CALL_TIMEOUT=${CALL_TIMEOUT:-60}
RESTORE_LOCK_SECONDS=${RESTORE_LOCK_SECONDS:-900}
PYTHON=${PYTHON:-}  # with Playwright, for verify's browser check; empty: tox -e browser's
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}

# --- derived ---------------------------------------------------------------------------------
ENDPOINT_CONTEXT=${SWARM_CONTEXT:-$NODE_PREFIX-lab}  # every swarm operation goes through it
HTTPS_URL=https://$PUBLIC_HOST:$HTTPS_PORT
# The certificate the ingress serves: yours, or the self-signed one `secrets` makes.
TLS_CERT_PATH=${TLS_CERT_FILE:-$SECRETS_DIR/tls.crt}
TLS_KEY_PATH=${TLS_KEY_FILE:-$SECRETS_DIR/tls.key}
# The API keys (stack/keys.sh): the lines the api reads (a Docker secret), and the stack's own
# two keys, the only keys ever kept: admin (write) and verify (read).
API_KEYS_PATH=$SECRETS_DIR/api_keys
ADMIN_KEY_FILE=$SECRETS_DIR/api_key
VERIFY_KEY_FILE=$SECRETS_DIR/verify_key
HTTP_URL=http://$PUBLIC_HOST:$HTTP_PORT
# The api alternates between two MongoDB users so that a new password never meets a running
# task that still holds the old one (operating.md, "Rotating the application password").
APP_USERS=("${MONGO_APP_USER}_a" "${MONGO_APP_USER}_b")
# The PASS/FAIL tally of the step that reports checks (verify, drill); reset by that step.
CHECKS=0
FAILED=0
# Commands to run when the script ends, newest first (defer).
DEFERRED=()
# The exit status of the last attempt.
ATTEMPT_RC=0
# Set by build and push: deploy then deploys API_IMAGE, the image this run made.
IMAGE_FROM_THIS_RUN=""
# The swarm node this script talks to (require_swarm): the short-lived tasks run on it.
MANAGER_NODE_ID=""

# --- output -----------------------------------------------------------------------------------
step() { printf '\n==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }
usage_error() { cmd_usage >&2; printf 'ERROR: %s\n' "$*" >&2; exit 2; }
pass() { CHECKS=$((CHECKS + 1)); printf 'PASS  %s\n' "$*"; }
fail() { CHECKS=$((CHECKS + 1)); FAILED=$((FAILED + 1)); printf 'FAIL  %s\n' "$*"; }

quote_cmd() {  # a command as it could be pasted into a shell
  local out="" arg
  for arg in "$@"; do
    if [[ $arg =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
      out+=" $arg"
    elif [[ $arg == *\'* && $arg != *[\"\$\`\\!]* ]]; then
      out+=" \"$arg\""  # easier to read than '\'' for an argument with single quotes
    else
      out+=" '${arg//\'/\'\\\'\'}'"
    fi
  done
  printf '%s' "${out# }"
}

show_cmd() { printf '+ %s\n' "$(quote_cmd "$@")"; }
run() { show_cmd "$@"; "$@"; }
quietly() { "$@" >/dev/null 2>&1; }

# tally CMD...: runs a command that prints PASS/FAIL lines (attempt: it stops at its first
# failure and cleans up after itself), passes them on and counts them; a command that fails
# without saying why becomes a FAIL line with its last words.
tally() {
  local log line said=0
  log=$(mktemp)
  attempt "$@" >"$log" 2>&1
  while IFS= read -r line; do
    case $line in
      "PASS  "*) pass "${line#PASS  }"; said=1 ;;
      "FAIL  "*) fail "${line#FAIL  }"; said=1 ;;
      *) [ -z "$line" ] || info "$line" ;;
    esac
  done <"$log"
  if [ "$ATTEMPT_RC" -ne 0 ] && [ "$said" = 0 ]; then
    fail "$(quote_cmd "${@:1:3}") ...: exit $ATTEMPT_RC: $(tail -n 1 "$log")"
  fi
  rm -f "$log"
}

# --- what the script made, removed when it ends, even on failure or Ctrl-C --------------------
defer() { DEFERRED=("$(quote_cmd "$@")" "${DEFERRED[@]}"); }

run_deferred() {
  local cmd
  for cmd in "${DEFERRED[@]}"; do eval "$cmd" || true; done
  DEFERRED=()
}

# attempt CMD...: CMD in a subshell that stops at its first failure and removes what it made,
# so that its failure can be handled instead of ending the script: its exit status goes to
# ATTEMPT_RC. Never call it as a condition (if, &&, ||, !): bash turns errexit off for
# everything a condition runs, and CMD would go on past a failure.
attempt() {
  set +e
  (set -e; DEFERRED=(); trap run_deferred EXIT; "$@")
  ATTEMPT_RC=$?
  set -e
}

make_workdir() {  # make_workdir VAR: a private temporary directory, removed at the end
  local dir
  dir=$(mktemp -d)
  defer rm -rf "$dir"
  printf -v "$1" '%s' "$dir"
}

interrupted() {
  printf '\nINTERRUPTED: stopped by a signal; what this run started is being removed, and nothing it was waiting for counts as done\n' >&2
  exit 130
}

# --- the swarm's endpoint -------------------------------------------------------------------
# bounded SECONDS CMD...: CMD, killed after SECONDS with the cause said. --foreground keeps
# CMD in the terminal's process group, so Ctrl-C reaches it.
bounded() {
  local seconds=$1 rc=0
  shift
  timeout --foreground "$seconds" "$@" || rc=$?
  if [ "$rc" -eq 124 ]; then
    printf 'ERROR: no answer within %s s: %s\n' "$seconds" "$(quote_cmd "$@")" >&2
  fi
  # Ctrl-C reached the command (the shell may not have been told): stop as the trap does.
  [ "$rc" -ne 130 ] || interrupted
  return "$rc"
}

sw() { bounded "$CALL_TIMEOUT" docker --context "$ENDPOINT_CONTEXT" "$@"; }
sw_for() { local seconds=$1; shift; bounded "$seconds" docker --context "$ENDPOINT_CONTEXT" "$@"; }
show_sw() { show_cmd docker --context "$ENDPOINT_CONTEXT" "$@"; }
run_sw() { show_sw "$@"; sw "$@"; }
run_sw_quiet() { show_sw "$@"; sw "$@" >/dev/null; }  # the command shown, its output not

state_py() { python3 "$STACK_DIR/swarm_state.py" "$@"; }

how_to_start() {  # what brings the stack back, in this mode
  if [ -z "$SWARM_CONTEXT" ]; then
    printf "'%s all' builds the lab swarm and deploys the stack" "$0"
  else
    printf "'SWARM_CONTEXT=%s %s labels secrets deploy' deploys the stack" "$SWARM_CONTEXT" "$0"
  fi
}

# require_swarm: the endpoint answers and is a manager of an active swarm; remembers its node.
require_swarm() {
  [ -z "$MANAGER_NODE_ID" ] || return 0
  local host out
  if ! host=$(docker context inspect --format '{{.Endpoints.docker.Host}}' "$ENDPOINT_CONTEXT" 2>/dev/null); then
    if [ -z "$SWARM_CONTEXT" ]; then
      die "no lab swarm here (no Docker context $ENDPOINT_CONTEXT): $(how_to_start)"
    fi
    die "SWARM_CONTEXT=$SWARM_CONTEXT: no such Docker context (docker context ls; e.g. docker context create $SWARM_CONTEXT --docker host=ssh://user@manager)"
  fi
  if ! out=$(sw info --format '{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}} {{.Swarm.NodeID}}' 2>&1); then
    [ -n "$SWARM_CONTEXT" ] || die "the lab swarm's manager does not answer at $host ($(tail -n 1 <<<"$out")): $(how_to_start)"
    die "the swarm's endpoint does not answer (context $ENDPOINT_CONTEXT, $host): $(tail -n 1 <<<"$out")"
  fi
  local state control id
  read -r state control id <<<"$out"
  [ "$state" = active ] || die "the engine at $host (context $ENDPOINT_CONTEXT) is not in a swarm (state: $state): $(how_to_start)"
  [ "$control" = true ] || die "the engine at $host (context $ENDPOINT_CONTEXT) is a worker: the context must reach a manager"
  MANAGER_NODE_ID=$id
}

# require_stack: the stack runs on the swarm (its api and mongo services exist).
require_stack() {
  require_swarm
  local svc missing=()
  for svc in api mongo; do
    quietly sw service inspect "${STACK_NAME}_$svc" || missing+=("${STACK_NAME}_$svc")
  done
  [ "${#missing[@]}" -eq 0 ] || die "no stack $STACK_NAME on this swarm (missing ${missing[*]}): $(how_to_start)"
}

service_json() {  # service_json SERVICE FILE: the service's spec as JSON
  sw service inspect "${STACK_NAME}_$1" >"$2"
}

service_image() {  # service_image SERVICE: the image its spec names, without its digest
  local image
  image=$(sw service inspect -f '{{.Spec.TaskTemplate.ContainerSpec.Image}}' "${STACK_NAME}_$1" 2>/dev/null) || return 1
  printf '%s' "${image%@*}"
}

# snapshot DIR: the stack's services, its tasks and the swarm's nodes as Docker prints them
# (services.json, tasks.json, nodes.json), for stack/swarm_state.py.
snapshot() {
  local dir=$1 out ids=() rc=0
  out=$(sw service ls -q --filter "label=com.docker.stack.namespace=$STACK_NAME") || return 1
  echo '[]' >"$dir/services.json"
  if [ -n "$out" ]; then
    mapfile -t ids <<<"$out"
    sw service inspect "${ids[@]}" >"$dir/services.json" || return 1
  fi
  echo '[]' >"$dir/tasks.json"
  out=$(sw stack ps -q --no-trunc "$STACK_NAME" 2>/dev/null) || rc=$?
  [ "$rc" -ne 124 ] || return 1
  if [ "$rc" -eq 0 ] && [ -n "$out" ]; then
    mapfile -t ids <<<"$out"
    # A task may be gone between the two calls: what was found is printed all the same.
    rc=0
    sw inspect --type task "${ids[@]}" >"$dir/tasks.json" 2>/dev/null || rc=$?
    [ "$rc" -ne 124 ] && [ -s "$dir/tasks.json" ] || return 1
  fi
  out=$(sw node ls -q) || return 1
  mapfile -t ids <<<"$out"
  sw node inspect "${ids[@]}" >"$dir/nodes.json"
}

# remove_stack [--purge]: the stack's services, networks, secrets and configs, and the tasks a
# killed run left behind; waits until they are gone. --purge on a swarm of your own also
# empties the database's volume on its node.
remove_stack() {
  local purge=${1:-} mongo_image="" start=$SECONDS left
  remove_stale_tasks
  if [ -n "$(sw service ls -q --filter "label=com.docker.stack.namespace=$STACK_NAME")" ]; then
    mongo_image=$(sw service inspect -f '{{.Spec.TaskTemplate.ContainerSpec.Image}}' "${STACK_NAME}_mongo" 2>/dev/null || true)
    run_sw stack rm "$STACK_NAME"
  else
    info "no stack $STACK_NAME on this swarm"
  fi
  while true; do
    left=$(sw service ls -q --filter "label=com.docker.stack.namespace=$STACK_NAME"; sw network ls -q --filter "label=com.docker.stack.namespace=$STACK_NAME")
    [ -n "$left" ] || break
    ((SECONDS - start < WAIT_TIMEOUT)) || die "the stack's services or networks were still there after $WAIT_TIMEOUT s"
    sleep 2
  done
  info "stack $STACK_NAME removed: its services, networks, secrets and configs"
  if [ -n "$purge" ] && [ -n "$SWARM_CONTEXT" ] && [ -n "$mongo_image" ]; then
    empty_database_volume "$mongo_image"
  fi
}

# On a swarm of your own the data lives in the volume <stack>_mongo-data on the database node,
# which only that node's engine can remove: a one-off task there deletes its contents.
empty_database_volume() {
  local name=$STACK_NAME-purge start=$SECONDS state=""
  run_sw_quiet service create --detach --quiet --name "$name" --label "$TASK_LABEL=$STACK_NAME" \
    --constraint 'node.labels.app==database' --restart-condition none --user 0:0 "${TASK_LOG_OPTIONS[@]}" \
    --mount "type=volume,source=${STACK_NAME}_mongo-data,target=/data/db" \
    --entrypoint find "$1" /data/db -mindepth 1 -delete
  defer task_remove "$name"
  while [ "$state" != complete ]; do
    state=$(sw service ps --format '{{.CurrentState}}' "$name" | head -n 1 | awk '{print tolower($1)}')
    case $state in failed | rejected) die "could not empty the volume ${STACK_NAME}_mongo-data: $(sw service ps --no-trunc --format '{{.Error}}' "$name" | head -n 1)" ;; esac
    ((SECONDS - start < WAIT_TIMEOUT)) || die "emptying the volume ${STACK_NAME}_mongo-data took over $WAIT_TIMEOUT s"
    sleep 2
  done
  info "emptied the volume ${STACK_NAME}_mongo-data on the node labelled app=database (the empty volume stays; 'docker volume rm ${STACK_NAME}_mongo-data' on that node removes it)"
}

# shellcheck source=stack/lab.sh
source "$STACK_DIR/lab.sh"
# shellcheck source=stack/tasks.sh
source "$STACK_DIR/tasks.sh"
# shellcheck source=stack/deploy.sh
source "$STACK_DIR/deploy.sh"
# shellcheck source=stack/verify.sh
source "$STACK_DIR/verify.sh"
# shellcheck source=stack/backup.sh
source "$STACK_DIR/backup.sh"
# shellcheck source=stack/keys.sh
source "$STACK_DIR/keys.sh"

# --- status, down, all ------------------------------------------------------------------------
cmd_status() {
  step "status: nodes, services and tasks of $STACK_NAME (context $ENDPOINT_CONTEXT)"
  require_swarm
  run_sw node ls
  run_sw service ls --filter "label=com.docker.stack.namespace=$STACK_NAME"
  if quietly sw service inspect "${STACK_NAME}_api"; then
    run_sw stack ps --filter desired-state=running "$STACK_NAME"
  else
    info "no stack $STACK_NAME on this swarm: $(how_to_start)"
  fi
}

# down [--purge]: a plain down loses no data. In the lab, whose nodes hold the database, it
# backs the users up first (and stops if it cannot); on a swarm of your own it removes the
# stack only, and the volume keeps the data for the next deploy.
cmd_down() {
  local purge=${1:-}
  step "down: remove stack $STACK_NAME$([ -z "$SWARM_CONTEXT" ] && printf ' and the lab swarm')${purge:+, data included}"
  local swarm_up=1
  if [ -z "$SWARM_CONTEXT" ] && ! (require_swarm) 2>/dev/null; then
    swarm_up=""
    info "the lab swarm does not answer: nothing to back up, removing what is left of it"
  else
    require_swarm
  fi
  local deployed_image=""
  if [ -n "$swarm_up" ] && deployed_image=$(service_image api); then
    if [ -z "$SWARM_CONTEXT" ] && [ -z "$purge" ]; then
      info "backing the users up first: the lab's nodes hold the database ('down --purge' skips this)"
      local file
      file=$BACKUP_DIR/$STACK_NAME-$(date -u +%Y%m%dT%H%M%SZ)-down.archive.gz
      attempt cmd_backup "$file"
      [ "$ATTEMPT_RC" -eq 0 ] || die "could not back the users up, so nothing was removed; 'down --purge' removes everything, data included, without a backup"
      info "the users are in $file: after '$0 all', '$0 restore $file' brings them back"
    fi
  fi
  [ -z "$swarm_up" ] || remove_stack "$purge"
  if [ -z "$SWARM_CONTEXT" ]; then
    lab_remove
  else
    info "kept: the swarm and its nodes, untouched but for the stack's services, networks, secrets and configs"
    if [ -z "$purge" ]; then
      info "kept: the volume ${STACK_NAME}_mongo-data on the node labelled app=database, with the users: the next deploy serves them again"
    fi
  fi
  info "kept: the passwords, API keys and certificate in $SECRETS_DIR (delete it for new ones)"
  local backups=0
  [ ! -d "$BACKUP_DIR" ] || backups=$(find "$BACKUP_DIR" -maxdepth 1 -name '*.archive.gz' | wc -l)
  info "kept: $backups backup(s) in $BACKUP_DIR"
  [ -z "$deployed_image" ] || info "kept: the image it ran, $deployed_image, in its registry"
  info "next: $(how_to_start)"
}

cmd_all() {
  local start=$SECONDS
  if [ -z "$SWARM_CONTEXT" ]; then
    cmd_nodes
    cmd_swarm
  fi
  cmd_labels
  cmd_secrets
  cmd_build
  cmd_push
  cmd_deploy
  local rc=0
  cmd_verify || rc=$?
  if [ "$rc" -eq 0 ]; then
    printf '\nall: finished in %d s, verify passed\n' "$((SECONDS - start))"
  else
    printf '\nall: FAILED: the stack is deployed but verify failed (%d of %d checks), after %d s\n' \
      "$FAILED" "$CHECKS" "$((SECONDS - start))"
  fi
  return "$rc"
}

# --- usage ------------------------------------------------------------------------------------
cmd_usage() {
  cat <<EOF
usage: stack/swarm.sh STEP [STEP...]      (stack/swarm.sh help: every step and setting)
steps: nodes swarm labels secrets build push deploy verify backup [FILE] restore FILE drill
       status down [--purge] all help; alone: api-key NAME read|write, api-key --revoke NAME
EOF
}

cmd_help() {
  cat <<EOF
usage: stack/swarm.sh STEP [STEP...]

Deploys the usersapi stack ($STACK_NAME) on Docker Swarm: on a swarm of your own through the
Docker context SWARM_CONTEXT, or, without it, on a lab swarm of three docker-in-docker nodes
that 'nodes' and 'swarm' build on this machine. The steps given run in order; the first that
fails stops the run with its exit status. An unknown step or a bad setting refuses the whole
list before any step runs (exit 2); -h or --help anywhere prints this and runs nothing.

steps (all = nodes swarm labels secrets build push deploy verify; with SWARM_CONTEXT, from
labels on):
  nodes    lab only: $LAB_MANAGER, $LAB_WORKER1 and $LAB_WORKER2 from $DIND_IMAGE on the
           bridge network $NODE_NETWORK; the ingress node publishes HTTP_PORT and HTTPS_PORT;
           the Docker context $NODE_PREFIX-lab reaches the manager
  swarm    lab only: init the swarm on $LAB_MANAGER, join the two workers
  labels   app=database on DATABASE_NODE, app=ingress on INGRESS_NODE, app=api on each
           API_NODE (the api's replicas spread over them)
  secrets  MongoDB root, application and backup passwords, the API keys admin (write; the
           key in SECRETS_DIR/api_key) and verify (read; verify_key), their lines
           (api_keys), and a self-signed TLS certificate unless TLS_CERT_FILE is set, in
           SECRETS_DIR (once)
  build    docker build (BuildKit) of the API image as API_IMAGE, on this machine
  push     docker push API_IMAGE, from this machine
  deploy   check the key file and the certificate (TLS_CERT_FILE: its key, expiry and
           PUBLIC_HOST) and that the image is in its registry, set the MongoDB users'
           passwords, docker stack deploy from this machine's CLI through the endpoint, wait
           until every service runs this deploy's spec. Without VERSION or API_IMAGE it keeps
           the image the stack runs; VERSION=<previous> deploy rolls back by hand
  verify   check the running stack; one PASS/FAIL line per check, non-zero exit on a FAIL
  backup [FILE]  mongodump of $MONGO_DB.users to FILE (default
           BACKUP_DIR/$STACK_NAME-<UTC time>.archive.gz); never overwrites a file
  restore FILE   check FILE, then replace $MONGO_DB.users with it while the API answers 503
  drill    a backup and restore round trip on a database of its own (PASS/FAIL lines)
  api-key NAME read|write   a new API key: its line added, the api rolled out with it (no
           request lost), then the key printed once, alone on the last line; never stored
  api-key --revoke NAME     remove a key's line and roll the api out: it gets 401 then
           (admin and verify, the stack's own keys, are refused: see docs/operating.md)
  status   docker node ls, docker service ls, docker stack ps
  down [--purge]  remove the stack; in the lab also the nodes, after a backup of the users;
           --purge: everything, data included, no backup
  all      every step from nodes (or labels) to verify, in order
  help     this text

settings (environment variables; current value, default in brackets):
  SWARM_CONTEXT   ${SWARM_CONTEXT:-(unset)}  [unset: the lab swarm; a context reaching a manager]
  STACK_NAME      $STACK_NAME  [semana4]
  VERSION         $VERSION  [__version__ in usersapi.py]
  DOCKERHUB_USER  ${DOCKERHUB_USER:-(unset)}  [none: set it, REGISTRY or API_IMAGE]
  REGISTRY        ${REGISTRY:-(unset)}  [docker.io/\$DOCKERHUB_USER]
  IMAGE_NAME      $IMAGE_NAME  [usersapi]
  API_IMAGE       ${API_IMAGE:-(unset)}  [\$REGISTRY/\$IMAGE_NAME:\$VERSION]
  API_REPLICAS    $API_REPLICAS  [2]
  DATABASE_NODE   ${DATABASE_NODE:-(unset)}  [lab: \$NODE_PREFIX-manager; own swarm: required by labels]
  INGRESS_NODE    ${INGRESS_NODE:-(unset)}  [lab: \$NODE_PREFIX-worker1; own swarm: required by labels]
  API_NODE        ${API_NODE:-(unset)}  [lab: \$NODE_PREFIX-worker2; own swarm: required by labels; several: "n2 n3"]
  PUBLIC_HOST     $PUBLIC_HOST  [localhost; the ingress node's address for clients, the certificate's name]
  HTTP_PORT       $HTTP_PORT  [80]
  HTTPS_PORT      $HTTPS_PORT  [443]
  SECRETS_DIR     $SECRETS_DIR  [stack/.secrets; relative paths from the repository's root]
  MONGO_ROOT_USER $MONGO_ROOT_USER  [root]
  MONGO_APP_USER  $MONGO_APP_USER  [usersapi; the api logs in as \${MONGO_APP_USER}_a or _b]
  MONGO_BACKUP_USER $MONGO_BACKUP_USER  [usersapi_backup; backup and restore log in as it]
  MONGO_DB        $MONGO_DB  [usersdb]
  BACKUP_DIR      $BACKUP_DIR  [backups; relative paths from the repository's root]
  TLS_DAYS        $TLS_DAYS  [365; the self-signed certificate's days]
  TLS_CERT_FILE   ${TLS_CERT_FILE:-(unset)}  [unset: SECRETS_DIR/tls.crt, self-signed; yours: PEM, chain allowed]
  TLS_KEY_FILE    ${TLS_KEY_FILE:-(unset)}  [unset: SECRETS_DIR/tls.key; yours: the certificate's PEM key]
  RATE_LIMIT      $RATE_LIMIT  [20; requests a second per client address at the ingress]
  RATE_BURST      $RATE_BURST  [40; requests served at once on top of RATE_LIMIT]
  CONN_LIMIT      $CONN_LIMIT  [32; requests in flight per client address]
  WAIT_TIMEOUT    $WAIT_TIMEOUT  [300; seconds a deploy, a task start or verify's wait may take]
  CALL_TIMEOUT    $CALL_TIMEOUT  [60; seconds one call to the swarm may take]
  RESTORE_LOCK_SECONDS $RESTORE_LOCK_SECONDS  [900; a restore's lock expires after this]
  BASE_IMAGE      $BASE_IMAGE  [python:3.13-slim; only for the size report]
  DIND_IMAGE      $DIND_IMAGE  [docker:27-dind; lab]
  DIND_RUN_OPTS   $DIND_RUN_OPTS  [--privileged; lab]
  NODE_PREFIX     $NODE_PREFIX  [\$STACK_NAME; lab node names]
  NODE_NETWORK    $NODE_NETWORK  [\$STACK_NAME-nodes; lab]
  PYTHON          ${PYTHON:-(unset)}  [a Python with Playwright for the browser check; unset: tox -e browser's]
  CHROMIUM        $CHROMIUM  [/usr/bin/chromium, the browser the browser check drives]
EOF
}

STEP_NAMES=" nodes swarm labels secrets build push deploy verify backup restore drill api-key status down all help "

is_step() { [[ $STEP_NAMES == *" $1 "* ]]; }

check_settings() {  # before any step runs
  local name value
  for name in HTTP_PORT HTTPS_PORT; do
    value=${!name}
    if ! [[ $value =~ ^[0-9]+$ ]] || ((value < 1 || value > 65535)); then
      usage_error "$name must be a port number (1-65535), not '$value'"
    fi
  done
  [ "$HTTP_PORT" != "$HTTPS_PORT" ] || usage_error "HTTP_PORT and HTTPS_PORT must differ"
  for name in API_REPLICAS WAIT_TIMEOUT CALL_TIMEOUT TLS_DAYS RESTORE_LOCK_SECONDS; do
    value=${!name}
    if ! [[ $value =~ ^[0-9]+$ ]] || ((value == 0)); then
      usage_error "$name must be a whole number above 0, not '$value'"
    fi
  done
  check_limits
  if [ -n "$TLS_CERT_FILE" ] && [ -z "$TLS_KEY_FILE" ]; then
    usage_error "TLS_CERT_FILE is set without TLS_KEY_FILE: give the certificate's private key too (or neither, for the self-signed one)"
  fi
  if [ -z "$TLS_CERT_FILE" ] && [ -n "$TLS_KEY_FILE" ]; then
    usage_error "TLS_KEY_FILE is set without TLS_CERT_FILE: give the certificate too (or neither, for the self-signed one)"
  fi
  # MongoDB's own rules for a database name on Linux: no / \ . space " $ or NUL, under 64 bytes.
  if [ -z "$MONGO_DB" ] || [[ $MONGO_DB == *[/\\.\ \"\$]* ]] || [ "${#MONGO_DB}" -ge 64 ]; then
    usage_error "MONGO_DB '$MONGO_DB' is not a MongoDB database name (no / \\ . space \" \$, under 64 characters)"
  fi
  for name in MONGO_ROOT_USER MONGO_APP_USER MONGO_BACKUP_USER STACK_NAME; do
    [[ ${!name} =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*$ ]] || usage_error "$name must be letters, digits, '.', '_' or '-', not '${!name}'"
  done
  local named
  # shellcheck disable=SC2046  # API_NODE's names, one word each
  named=$(printf '%s\n' "$DATABASE_NODE" "$INGRESS_NODE" $(api_nodes) | grep -v '^$' | sort | uniq -d || true)
  [ -z "$named" ] || usage_error "DATABASE_NODE, INGRESS_NODE and API_NODE must name different nodes (one app label each): $named is named twice"
}

api_nodes() { printf '%s' "${API_NODE//,/ }"; }  # API_NODE, commas or spaces between names

check_key_name() {  # the API's rule for a key's name (usersapi_keys.py)
  [[ $1 =~ ^[A-Za-z0-9._-]{1,64}$ ]] || usage_error "an API key's name is 1 to 64 letters, digits, '.', '_' or '-', not '$1'"
}

# The ingress's limits: whole numbers within bounds nginx and verify can live with. verify's
# race sends 24 PATCHes at once from one address, with the POST and DELETE of their user:
# a burst or a connection limit below that would refuse the race, not a client.
check_limits() {
  local name value low high
  for name in RATE_LIMIT:1:100000 RATE_BURST:26:100000 CONN_LIMIT:25:100000; do
    IFS=: read -r name low high <<<"$name"
    value=${!name}
    if ! [[ $value =~ ^[0-9]{1,6}$ ]] || ((10#$value < low || 10#$value > high)); then
      usage_error "$name must be a whole number from $low to $high, not '$value'$([ "$low" -gt 1 ] && printf ' (verify sends 24 requests at once from one address)')"
    fi
  done
}

# main STEP [ARG] ...: the whole list is checked before the first step runs.
main() {
  local arg
  for arg in "$@"; do
    if [ "$arg" = -h ] || [ "$arg" = --help ]; then cmd_help; return 0; fi
  done
  [ $# -gt 0 ] || { cmd_usage >&2; exit 2; }
  local steps=() args=()
  while [ $# -gt 0 ]; do
    arg=$1
    shift
    is_step "$arg" || usage_error "unknown step: $arg"
    if [ -n "$SWARM_CONTEXT" ] && [[ $arg == nodes || $arg == swarm ]]; then
      usage_error "'$arg' builds the lab swarm on this machine; with SWARM_CONTEXT=$SWARM_CONTEXT the swarm is yours already: run labels secrets deploy (or all, which starts there)"
    fi
    steps+=("$arg")
    case $arg in
      restore)
        if [ $# -eq 0 ] || is_step "$1"; then usage_error "restore needs the archive: restore FILE"; fi
        args+=("$1")
        shift
        ;;
      backup)
        if [ $# -gt 0 ] && ! is_step "$1"; then args+=("$1"); shift; else args+=(""); fi
        ;;
      down)
        if [ "${1:-}" = --purge ]; then args+=(--purge); shift; else args+=(""); fi
        ;;
      api-key)
        if [ "${1:-}" = --revoke ]; then
          [ $# -ge 2 ] || usage_error "api-key --revoke needs the key's name: api-key --revoke NAME"
          check_key_name "$2"
          args+=("--revoke $2")
        else
          [ $# -ge 2 ] || usage_error "api-key needs a name and a scope: api-key NAME read|write"
          check_key_name "$1"
          [[ $2 == read || $2 == write ]] || usage_error "an API key's scope is read or write, not '$2': api-key NAME read|write"
          args+=("$1 $2")
        fi
        shift 2
        ;;
      *) args+=("") ;;
    esac
  done
  if [[ " ${steps[*]} " == *" api-key "* ]] && [ "${#steps[@]}" -gt 1 ]; then
    usage_error "api-key runs alone: the new key is the last line of the run's output"
  fi
  if [ -n "$SWARM_CONTEXT" ] && [[ " ${steps[*]} " == *" labels "* || " ${steps[*]} " == *" all "* ]]; then
    if [ -z "$DATABASE_NODE" ] || [ -z "$INGRESS_NODE" ] || [ -z "$(api_nodes)" ]; then
      usage_error "labels needs your nodes by name: set DATABASE_NODE, INGRESS_NODE and API_NODE as 'docker --context $SWARM_CONTEXT node ls' shows them"
    fi
  fi
  check_settings
  # Your own certificate is checked before the first step of a run that deploys.
  if [[ " ${steps[*]} " =~ " "(deploy|all|api-key)" " ]]; then check_tls_files; fi
  trap run_deferred EXIT
  trap interrupted INT TERM
  local i
  for i in "${!steps[@]}"; do
    case ${steps[i]} in
      backup | restore | down) "cmd_${steps[i]}" "${args[i]}" ;;
      api-key)
        local words
        read -r -a words <<<"${args[i]}"  # checked words: a name and a scope, or --revoke NAME
        cmd_api_key "${words[@]}"
        ;;
      *) "cmd_${steps[i]}" ;;
    esac
  done
}

# Sourced (as tools/evidence.sh does), the script only defines its settings and functions.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  main "$@"
fi
