#!/usr/bin/env bash
# Deploy the usersapi stack on a three-node Docker Swarm made of docker-in-docker nodes.
#
#   stack/swarm.sh all        nodes, swarm, labels, secrets, build, push, deploy, verify
#   stack/swarm.sh down       remove the stack, the nodes and their network
#   stack/swarm.sh help       every step and every setting with its current value
#
# Every setting is an environment variable with a default (see `help`). Every step can run
# again safely: existing nodes, swarm membership, labels, secrets and images are reused.
set -euo pipefail

STACK_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROJECT_DIR=$(dirname "$STACK_DIR")

project_version() {  # the version in pyproject.toml, 1.0.0 if it cannot be read
  sed -n 's/^version *= *"\([^"]*\)".*/\1/p' "$PROJECT_DIR/pyproject.toml" 2>/dev/null | head -n 1
}

# --- settings ------------------------------------------------------------------------------
STACK_NAME=${STACK_NAME:-semana4}
VERSION=${VERSION:-$(project_version)}
VERSION=${VERSION:-1.0.0}
DOCKERHUB_USER=${DOCKERHUB_USER:-usersapi}
REGISTRY=${REGISTRY:-docker.io/$DOCKERHUB_USER}
IMAGE_NAME=${IMAGE_NAME:-usersapi}
API_IMAGE=${API_IMAGE:-$REGISTRY/$IMAGE_NAME:$VERSION}
BASE_IMAGE=${BASE_IMAGE:-python:3.13-slim}
DIND_IMAGE=${DIND_IMAGE:-docker:27-dind}
DIND_RUN_OPTS=${DIND_RUN_OPTS:---privileged}
NODE_PREFIX=${NODE_PREFIX:-$STACK_NAME}
NODE_NETWORK=${NODE_NETWORK:-$STACK_NAME-nodes}
HTTP_PORT=${HTTP_PORT:-80}
HTTPS_PORT=${HTTPS_PORT:-443}
PUBLIC_HOST=${PUBLIC_HOST:-localhost}
SECRETS_DIR=${SECRETS_DIR:-$STACK_DIR/.secrets}
MONGO_ROOT_USER=${MONGO_ROOT_USER:-root}
TLS_DAYS=${TLS_DAYS:-365}
WAIT_TIMEOUT=${WAIT_TIMEOUT:-300}

MANAGER=$NODE_PREFIX-manager
WORKER1=$NODE_PREFIX-worker1  # ingress node: publishes HTTP_PORT and HTTPS_PORT
WORKER2=$NODE_PREFIX-worker2
NODES=("$MANAGER" "$WORKER1" "$WORKER2")
NODE_LABEL=usersapi.swarm.stack  # on the node containers, so `down` finds exactly them
REMOTE_DIR=/stack                # where the stack files go inside the manager

# --- output helpers -------------------------------------------------------------------------
step() { printf '\n==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

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

on() {  # on NODE CMD...: run CMD inside a node container, printing the full command
  local node=$1; shift
  run docker exec "$node" "$@"
}

quietly() { "$@" >/dev/null 2>&1; }

# --- node helpers -----------------------------------------------------------------------------
node_state() {  # running | stopped | missing
  local running
  running=$(docker inspect -f '{{.State.Running}}' "$1" 2>/dev/null) || { echo missing; return; }
  [ "$running" = true ] && echo running || echo stopped
}

require_node() {
  [ "$(node_state "$1")" = running ] || die "node $1 is not running: run '$0 nodes' first"
}

swarm_state() {  # inactive | active | pending | error | locked
  docker exec "$1" docker info -f '{{.Swarm.LocalNodeState}}' 2>/dev/null || echo unknown
}

node_ip() {
  docker inspect -f "{{(index .NetworkSettings.Networks \"$NODE_NETWORK\").IPAddress}}" "$1"
}

wait_for_engine() {
  local node=$1 i
  for ((i = 0; i < 60; i++)); do
    quietly docker exec "$node" docker info && return 0
    sleep 1
  done
  die "the Docker engine in $node did not start within 60 s (docker logs $node)"
}

short_hash() { sha256sum "$1" | cut -c1-12; }

# --- steps ------------------------------------------------------------------------------------
cmd_nodes() {
  step "nodes: a manager and two workers as docker-in-docker containers ($DIND_IMAGE)"
  local dind_opts node state
  read -r -a dind_opts <<<"$DIND_RUN_OPTS"
  if quietly docker network inspect "$NODE_NETWORK"; then
    info "network $NODE_NETWORK exists, reusing it"
  else
    run docker network create --label "$NODE_LABEL=$STACK_NAME" "$NODE_NETWORK"
  fi
  for node in "${NODES[@]}"; do
    state=$(node_state "$node")
    case $state in
      running) info "node $node is already running, reusing it" ;;
      stopped) run docker start "$node" ;;
      missing)
        local ports=()
        if [ "$node" = "$WORKER1" ]; then
          # the ingress node: the stack publishes these ports on it (mode: host)
          ports=(-p "$HTTP_PORT:$HTTP_PORT" -p "$HTTPS_PORT:$HTTPS_PORT")
        fi
        run docker run -d "${dind_opts[@]}" --name "$node" --hostname "$node" \
          --network "$NODE_NETWORK" --label "$NODE_LABEL=$STACK_NAME" "${ports[@]}" "$DIND_IMAGE"
        ;;
    esac
  done
  if ! docker port "$WORKER1" 2>/dev/null | grep -q ":$HTTPS_PORT\$"; then
    die "$WORKER1 does not publish port $HTTPS_PORT (created with other ports?): run '$0 down' first"
  fi
  info "waiting for the Docker engine inside each node"
  for node in "${NODES[@]}"; do wait_for_engine "$node"; done
  run docker ps --filter "label=$NODE_LABEL=$STACK_NAME" \
    --format 'table {{.Names}}\t{{.Image}}\t{{.Status}}\t{{.Ports}}'
}

cmd_swarm() {
  step "swarm: init on $MANAGER, join $WORKER1 and $WORKER2 as workers"
  local node ip token id
  for node in "${NODES[@]}"; do require_node "$node"; done
  ip=$(node_ip "$MANAGER")
  if [ "$(swarm_state "$MANAGER")" = active ]; then
    info "$MANAGER is already a swarm manager"
  else
    # Only the first line: the rest of the output prints the join token, a credential.
    on "$MANAGER" docker swarm init --advertise-addr "$ip" | sed -n 1p
  fi
  token=$(docker exec "$MANAGER" docker swarm join-token -q worker)
  for node in "$WORKER1" "$WORKER2"; do
    if [ "$(swarm_state "$node")" = active ]; then
      id=$(docker exec "$node" docker info -f '{{.Swarm.NodeID}}')
      if docker exec "$MANAGER" docker node ls -q | grep -qx "$id"; then
        info "$node is already a member of this swarm"
        continue
      fi
      info "$node belongs to another swarm (the manager was recreated): leaving it"
      on "$node" docker swarm leave --force
    fi
    show_cmd docker exec "$node" docker swarm join --token '<worker-token>' "$ip:2377"
    docker exec "$node" docker swarm join --token "$token" "$ip:2377"
  done
  # Nodes recreated under the same name leave "Down" entries behind; drop them so names
  # stay unambiguous for the labels step.
  local stale
  stale=$(docker exec "$MANAGER" docker node ls --format '{{.ID}} {{.Status}}' | awk '$2 == "Down" {print $1}')
  for id in $stale; do on "$MANAGER" docker node rm --force "$id"; done
  on "$MANAGER" docker node ls
}

cmd_labels() {
  step "labels: app=database on $MANAGER, app=ingress on $WORKER1, app=api on $WORKER2"
  require_node "$MANAGER"
  on "$MANAGER" docker node update --label-add app=database "$MANAGER"
  on "$MANAGER" docker node update --label-add app=ingress "$WORKER1"
  on "$MANAGER" docker node update --label-add app=api "$WORKER2"
  on "$MANAGER" docker node inspect \
    --format '{{.Description.Hostname}}  role={{.Spec.Role}}  labels={{json .Spec.Labels}}' "${NODES[@]}"
}

cmd_secrets() {
  step "secrets: MongoDB root password and a self-signed TLS certificate in $SECRETS_DIR"
  local pw=$SECRETS_DIR/mongo_root_password crt=$SECRETS_DIR/tls.crt key=$SECRETS_DIR/tls.key
  (umask 077 && mkdir -p "$SECRETS_DIR")
  if [ -s "$pw" ]; then
    info "MongoDB password exists, reusing it ($pw)"
  else
    info "generating a random MongoDB root password (openssl rand, 48 hex characters)"
    (umask 077 && openssl rand -hex 24 | tr -d '\n' >"$pw")
  fi
  if [ -s "$crt" ] && [ -s "$key" ]; then
    info "TLS certificate exists, reusing it ($crt)"
  else
    local san="DNS:localhost,IP:127.0.0.1"
    [ "$PUBLIC_HOST" = localhost ] || san="DNS:$PUBLIC_HOST,$san"
    (umask 077 && run openssl req -x509 -newkey rsa:2048 -nodes -days "$TLS_DAYS" \
      -subj "/CN=$PUBLIC_HOST" -addext "subjectAltName=$san" \
      -keyout "$key" -out "$crt" 2>/dev/null)
    chmod 644 "$crt"
  fi
  run openssl x509 -in "$crt" -noout -subject -enddate -ext subjectAltName
  info "kept out of git (.gitignore: stack/.secrets/); contents are never printed:"
  run ls -l "$SECRETS_DIR"
}

cmd_build() {
  step "build: $API_IMAGE from $PROJECT_DIR/Dockerfile (BuildKit)"
  local revision
  revision=$(git -C "$PROJECT_DIR" rev-parse --short HEAD 2>/dev/null || echo unknown)
  run env DOCKER_BUILDKIT=1 docker build --build-arg "VERSION=$VERSION" \
    --build-arg "REVISION=$revision" -t "$API_IMAGE" "$PROJECT_DIR"
  quietly docker image inspect "$BASE_IMAGE" || run docker pull -q "$BASE_IMAGE"
  local size base
  size=$(docker image inspect -f '{{.Size}}' "$API_IMAGE")
  base=$(docker image inspect -f '{{.Size}}' "$BASE_IMAGE")
  mb() { echo $((($1 + 500000) / 1000000)); }  # the unit of `docker image ls`
  info "image size: $(mb "$size") MB ($API_IMAGE), base $(mb "$base") MB ($BASE_IMAGE), added $(mb $((size - base))) MB"
  run docker image ls --format 'table {{.Repository}}:{{.Tag}}\t{{.ID}}\t{{.Size}}' "$API_IMAGE"
}

cmd_push() {
  step "push: $API_IMAGE to ${API_IMAGE%%/*}"
  if ! run docker push "$API_IMAGE"; then
    die "push failed: for Docker Hub run 'docker login' and set DOCKERHUB_USER (or REGISTRY)"
  fi
}

stack_services() {
  docker exec "$MANAGER" docker service ls --filter "label=com.docker.stack.namespace=$STACK_NAME" \
    --format '{{.Name}}'
}

# One line per service of the stack: NAME RUNNING DESIRED UPDATE-STATE
service_states() {
  local replicas names
  replicas=$(docker exec "$MANAGER" docker service ls \
    --filter "label=com.docker.stack.namespace=$STACK_NAME" --format '{{.Name}} {{.Replicas}}')
  [ -n "$replicas" ] || return 0
  mapfile -t names < <(awk '{print $1}' <<<"$replicas")
  docker exec "$MANAGER" docker service inspect -f \
    '{{.Spec.Name}} {{if .UpdateStatus}}{{.UpdateStatus.State}}{{else}}none{{end}}' "${names[@]}" |
    awk 'NR == FNR {split($2, r, "/"); running[$1] = r[1]; desired[$1] = r[2]; next}
         {print $1, running[$1], desired[$1], $2}' <(printf '%s\n' "$replicas") -
}

wait_converged() {  # until every service runs all its replicas and no update is in flight
  local start=$SECONDS states pending
  info "waiting until every service of $STACK_NAME runs all its replicas (at most $WAIT_TIMEOUT s)"
  while true; do
    states=$(service_states)
    pending=$(awk '$2 != $3 || $3 == 0 || $4 == "updating" || $4 == "rollback_started" {print $1 " " $2 "/" $3 " " $4}' <<<"$states")
    if [ -n "$states" ] && [ -z "$pending" ]; then
      info "converged after $((SECONDS - start)) s"
      if grep -Eq 'rollback_completed|paused|rollback_paused' <<<"$states"; then
        info "note: an update was rolled back or paused:"
        printf '%s\n' "$states" | sed 's/^/      /'
        return 1
      fi
      return 0
    fi
    if ((SECONDS - start >= WAIT_TIMEOUT)); then
      info "not converged after $WAIT_TIMEOUT s:"
      printf '%s\n' "$pending" | sed 's/^/      /'
      on "$MANAGER" docker stack ps --no-trunc --filter desired-state=running "$STACK_NAME" || true
      return 1
    fi
    info "$((SECONDS - start)) s: $(tr '\n' ',' <<<"$pending" | sed 's/,$//;s/,/, /g')"
    sleep 5
  done
}

prune_old_versions() {  # secrets and configs of this stack left over from earlier deploys
  local kind name
  for kind in secret config; do
    for name in $(docker exec "$MANAGER" docker "$kind" ls \
      --filter "label=com.docker.stack.namespace=$STACK_NAME" --format '{{.Name}}'); do
      if ! grep -qx "$name" <<<"$CURRENT_OBJECTS"; then
        on "$MANAGER" docker "$kind" rm "$name" >/dev/null 2>&1 || true
      fi
    done
  done
}

cmd_deploy() {
  step "deploy: stack $STACK_NAME from stack/docker-stack.yml, through $MANAGER"
  require_node "$MANAGER"
  local pw=$SECRETS_DIR/mongo_root_password crt=$SECRETS_DIR/tls.crt key=$SECRETS_DIR/tls.key
  if ! [ -s "$pw" ] || ! [ -s "$crt" ] || ! [ -s "$key" ]; then
    die "secrets missing in $SECRETS_DIR: run '$0 secrets' first"
  fi
  # Content hashes name the secrets and configs (see the top of docker-stack.yml).
  local mongo_h tls_cert_h tls_key_h nginx_h
  mongo_h=$(short_hash "$pw")
  tls_cert_h=$(short_hash "$crt")
  tls_key_h=$(short_hash "$key")
  nginx_h=$(short_hash "$STACK_DIR/nginx.conf")
  CURRENT_OBJECTS=$(printf '%s\n' "${STACK_NAME}_mongo_root_password_$mongo_h" \
    "${STACK_NAME}_tls_cert_$tls_cert_h" "${STACK_NAME}_tls_key_$tls_key_h" \
    "${STACK_NAME}_nginx_conf_$nginx_h")
  on "$MANAGER" mkdir -p "$REMOTE_DIR/.secrets"
  run docker cp "$STACK_DIR/docker-stack.yml" "$MANAGER:$REMOTE_DIR/docker-stack.yml"
  run docker cp "$STACK_DIR/nginx.conf" "$MANAGER:$REMOTE_DIR/nginx.conf"
  run docker cp "$SECRETS_DIR/." "$MANAGER:$REMOTE_DIR/.secrets/"
  local detach=()
  # Docker 26+ asks to choose; this script waits for convergence itself, bounded.
  if docker exec "$MANAGER" docker stack deploy --help 2>/dev/null | grep -q -- '--detach'; then
    detach=(--detach=true)
  fi
  local status=0
  run docker exec -w "$REMOTE_DIR" \
    -e "STACK_NAME=$STACK_NAME" -e "API_IMAGE=$API_IMAGE" -e "MONGO_ROOT_USER=$MONGO_ROOT_USER" \
    -e "HTTP_PORT=$HTTP_PORT" -e "HTTPS_PORT=$HTTPS_PORT" \
    -e "MONGO_PASSWORD_HASH=$mongo_h" -e "TLS_CERT_HASH=$tls_cert_h" -e "TLS_KEY_HASH=$tls_key_h" \
    -e "NGINX_CONF_HASH=$nginx_h" \
    "$MANAGER" docker stack deploy --with-registry-auth --prune "${detach[@]}" \
    -c docker-stack.yml "$STACK_NAME" || status=$?
  # The swarm keeps the secrets (encrypted in its raft log); the plain files go.
  on "$MANAGER" rm -rf "$REMOTE_DIR/.secrets"
  [ "$status" -eq 0 ] || die "docker stack deploy failed"
  wait_converged || status=$?
  prune_old_versions
  on "$MANAGER" docker service ls --filter "label=com.docker.stack.namespace=$STACK_NAME"
  on "$MANAGER" docker stack ps --filter desired-state=running "$STACK_NAME"
  [ "$status" -eq 0 ] || die "stack $STACK_NAME did not converge"
}

# --- verify: stack/verify.sh -------------------------------------------------------------------
# shellcheck source=stack/verify.sh
source "$STACK_DIR/verify.sh"

# --- status, down, all, help --------------------------------------------------------------------
cmd_status() {
  step "status: nodes, services and tasks of $STACK_NAME"
  require_node "$MANAGER"
  on "$MANAGER" docker node ls
  on "$MANAGER" docker service ls
  on "$MANAGER" docker stack ps --filter desired-state=running "$STACK_NAME"
}

cmd_down() {
  step "down: remove stack $STACK_NAME, the nodes and network $NODE_NETWORK"
  if [ "$(node_state "$MANAGER")" = running ] && [ "$(swarm_state "$MANAGER")" = active ]; then
    on "$MANAGER" docker stack rm "$STACK_NAME" || true
  fi
  local node existing=()
  for node in "${NODES[@]}"; do
    [ "$(node_state "$node")" = missing ] || existing+=("$node")
  done
  if [ "${#existing[@]}" -gt 0 ]; then
    # -v: also each node's /var/lib/docker volume (its images, swarm state, MongoDB data)
    run docker rm -f -v "${existing[@]}"
  else
    info "no nodes to remove"
  fi
  if quietly docker network inspect "$NODE_NETWORK"; then
    run docker network rm "$NODE_NETWORK"
  else
    info "network $NODE_NETWORK already gone"
  fi
  info "kept: $SECRETS_DIR (delete it for new credentials) and the image $API_IMAGE"
}

cmd_all() {
  local start=$SECONDS
  cmd_nodes
  cmd_swarm
  cmd_labels
  cmd_secrets
  cmd_build
  cmd_push
  cmd_deploy
  local rc=0
  cmd_verify || rc=$?
  printf '\nall: finished in %d s\n' "$((SECONDS - start))"
  return "$rc"
}

cmd_help() {
  cat <<EOF
usage: stack/swarm.sh COMMAND

Deploys the usersapi stack ($STACK_NAME) on a three-node swarm of docker-in-docker nodes.

commands (all = nodes swarm labels secrets build push deploy verify):
  nodes    create $MANAGER, $WORKER1 (publishes $HTTP_PORT and $HTTPS_PORT) and $WORKER2
           from $DIND_IMAGE on the bridge network $NODE_NETWORK
  swarm    init the swarm on $MANAGER, join the two workers
  labels   app=database on $MANAGER, app=ingress on $WORKER1, app=api on $WORKER2
  secrets  MongoDB root password and self-signed TLS certificate in SECRETS_DIR (once)
  build    docker build (BuildKit) of the API image as API_IMAGE
  push     docker push API_IMAGE
  deploy   copy the stack file, nginx.conf and secrets to $MANAGER, docker stack deploy,
           wait until every service has its replicas
  verify   check the running stack; one PASS/FAIL line per check, non-zero exit on a FAIL
  status   docker node ls, docker service ls, docker stack ps
  down     remove the stack, the nodes and their network
  all      every step from nodes to verify, in order
  help     this text

settings (environment variables; current value, default in brackets):
  STACK_NAME      $STACK_NAME  [semana4]
  VERSION         $VERSION  [version in pyproject.toml]
  DOCKERHUB_USER  $DOCKERHUB_USER  [usersapi]
  REGISTRY        $REGISTRY  [docker.io/\$DOCKERHUB_USER]
  IMAGE_NAME      $IMAGE_NAME  [usersapi]
  API_IMAGE       $API_IMAGE  [\$REGISTRY/\$IMAGE_NAME:\$VERSION]
  BASE_IMAGE      $BASE_IMAGE  [python:3.13-slim; only for the size report]
  DIND_IMAGE      $DIND_IMAGE  [docker:27-dind]
  DIND_RUN_OPTS   $DIND_RUN_OPTS  [--privileged]
  NODE_PREFIX     $NODE_PREFIX  [\$STACK_NAME]
  NODE_NETWORK    $NODE_NETWORK  [\$STACK_NAME-nodes]
  HTTP_PORT       $HTTP_PORT  [80]
  HTTPS_PORT      $HTTPS_PORT  [443]
  PUBLIC_HOST     $PUBLIC_HOST  [localhost; certificate name and verify's target]
  SECRETS_DIR     $SECRETS_DIR  [stack/.secrets]
  MONGO_ROOT_USER $MONGO_ROOT_USER  [root]
  TLS_DAYS        $TLS_DAYS  [365]
  WAIT_TIMEOUT    $WAIT_TIMEOUT  [300; seconds deploy and verify wait at most]
  PYTHON          $PYTHON  [python3; with Playwright, for verify's browser check]
  CHROMIUM        ${CHROMIUM:-/usr/bin/chromium}  [the browser verify's browser check drives]
EOF
}

main() {
  local cmd=${1:-help}
  case $cmd in
    nodes | swarm | labels | secrets | build | push | deploy | verify | status | down | all | help)
      "cmd_$cmd" ;;
    -h | --help) cmd_help ;;
    *) cmd_help >&2; die "unknown command: $cmd" ;;
  esac
}

# Sourced (as stack/evidence.sh does), the script only defines its settings and functions.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  main "$@"
fi
