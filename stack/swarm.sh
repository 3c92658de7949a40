#!/usr/bin/env bash
# Deploy the usersapi stack on a three-node Docker Swarm made of docker-in-docker nodes.
#
#   stack/swarm.sh all              nodes, swarm, labels, secrets, build, push, deploy, verify
#   stack/swarm.sh build push deploy several steps, in order, stopping at the first failure
#   stack/swarm.sh backup | restore FILE | drill   the database (stack/backup.sh)
#   stack/swarm.sh down             remove the stack, the nodes and their network
#   stack/swarm.sh help             every step and every setting with its current value
#
# Every setting is an environment variable with a default (see `help`). Every step can run
# again safely: existing nodes, swarm membership, labels, secrets and images are reused.
set -euo pipefail

STACK_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROJECT_DIR=$(dirname "$STACK_DIR")

project_version() {  # __version__ in usersapi.py, the one place it is written
  sed -n 's/^__version__ *= *"\([^"]*\)".*/\1/p' "$PROJECT_DIR/usersapi.py" 2>/dev/null | head -n 1
}

# --- settings ------------------------------------------------------------------------------
STACK_NAME=${STACK_NAME:-semana4}
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
DIND_IMAGE=${DIND_IMAGE:-docker:27-dind}
DIND_RUN_OPTS=${DIND_RUN_OPTS:---privileged}
NODE_PREFIX=${NODE_PREFIX:-$STACK_NAME}
NODE_NETWORK=${NODE_NETWORK:-$STACK_NAME-nodes}
HTTP_PORT=${HTTP_PORT:-80}
HTTPS_PORT=${HTTPS_PORT:-443}
PUBLIC_HOST=${PUBLIC_HOST:-localhost}
SECRETS_DIR=${SECRETS_DIR:-$STACK_DIR/.secrets}
MONGO_ROOT_USER=${MONGO_ROOT_USER:-root}
MONGO_APP_USER=${MONGO_APP_USER:-usersapi}
MONGO_DB=${MONGO_DB:-usersdb}
BACKUP_DIR=${BACKUP_DIR:-$PROJECT_DIR/backups}
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
usage_error() { cmd_usage >&2; printf 'ERROR: %s\n' "$*" >&2; exit 2; }

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

port_in_use() {  # something already accepts connections on this host port
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# The ingress node publishes the ports it was created with: nginx on other ports would be out
# of reach. Changing them means new nodes.
require_ingress_ports() {
  local published port missing=()
  published=$(docker port "$WORKER1" 2>/dev/null || true)
  for port in "$HTTP_PORT" "$HTTPS_PORT"; do
    grep -Eq "^$port/tcp -> .*:$port\$" <<<"$published" || missing+=("$port")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  local have
  have=$(sed -n 's|^\([0-9]*\)/tcp -> .*|\1|p' <<<"$published" | sort -un | xargs)
  die "$WORKER1 publishes host ports [${have:-none}], not ${missing[*]} (HTTP_PORT=$HTTP_PORT HTTPS_PORT=$HTTPS_PORT): run with the ports it publishes, or '$0 down' first and then '$0 all' with the new ports"
}

# build, push and deploy need to know whose image it is.
require_image_name() {
  [ -n "$API_IMAGE" ] && return 0
  die "no registry account set: set DOCKERHUB_USER (your Docker Hub account), REGISTRY (e.g. registry.example.com/team) or API_IMAGE (the full image name)"
}

registry_of() {  # the registry host of an image name, docker.io when it names none
  local first=${1%%/*}
  if [[ $1 == */* && ($first == *.* || $first == *:* || $first == localhost) ]]; then
    echo "$first"
  else
    echo docker.io
  fi
}

# image_in_registry IMAGE: asks the registry for the image's manifest, as a node pulling it
# would (plain http only for registries the engine itself treats as insecure).
image_in_registry() {
  local registry insecure=()
  registry=$(registry_of "$1")
  if docker info -f '{{range .RegistryConfig.IndexConfigs}}{{if not .Secure}}{{.Name}} {{end}}{{end}}' 2>/dev/null |
    tr ' ' '\n' | grep -qxF "$registry"; then
    insecure=(--insecure)
  fi
  docker manifest inspect "${insecure[@]}" "$1" >/dev/null
}

# --- steps ------------------------------------------------------------------------------------
cmd_nodes() {
  step "nodes: a manager and two workers as docker-in-docker containers ($DIND_IMAGE)"
  local dind_opts node state port
  read -r -a dind_opts <<<"$DIND_RUN_OPTS"
  if [ "$(node_state "$WORKER1")" = missing ]; then
    for port in "$HTTP_PORT" "$HTTPS_PORT"; do
      ! port_in_use "$port" || die "host port $port is in use: choose free ports with HTTP_PORT and HTTPS_PORT"
    done
  fi
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
  require_ingress_ports
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
    # Only docker's first line ("Swarm initialized: ..."): the rest prints the join token,
    # a credential.
    show_cmd docker exec "$MANAGER" docker swarm init --advertise-addr "$ip"
    docker exec "$MANAGER" docker swarm init --advertise-addr "$ip" | sed -n 1p
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

subject_alt_names() {  # subject_alt_names HOST: HOST, localhost and 127.0.0.1, each once
  local entry out=()
  for entry in "$1" localhost 127.0.0.1; do
    if [[ $entry =~ ^[0-9.]+$|: ]]; then entry=IP:$entry; else entry=DNS:$entry; fi
    [[ " ${out[*]} " == *" $entry "* ]] || out+=("$entry")
  done
  local IFS=,
  printf '%s' "${out[*]}"
}

cmd_secrets() {
  step "secrets: MongoDB root and application passwords and a self-signed TLS certificate in $SECRETS_DIR"
  local crt=$SECRETS_DIR/tls.crt key=$SECRETS_DIR/tls.key name
  (umask 077 && mkdir -p "$SECRETS_DIR")
  for name in mongo_root_password mongo_app_password; do
    if [ -s "$SECRETS_DIR/$name" ]; then
      info "$name exists, reusing it ($SECRETS_DIR/$name)"
    else
      info "generating $name: random, openssl rand, 48 hex characters"
      (umask 077 && openssl rand -hex 24 | tr -d '\n' >"$SECRETS_DIR/$name")
    fi
  done
  if [ -s "$crt" ] && [ -s "$key" ]; then
    info "TLS certificate exists, reusing it ($crt)"
  else
    local san
    san=$(subject_alt_names "$PUBLIC_HOST")
    (umask 077 && run openssl req -x509 -newkey rsa:2048 -nodes -days "$TLS_DAYS" \
      -subj "/CN=$PUBLIC_HOST" -addext "subjectAltName=$san" \
      -keyout "$key" -out "$crt" 2>/dev/null)
    chmod 644 "$crt"
  fi
  run openssl x509 -in "$crt" -noout -subject -enddate -ext subjectAltName
  info "kept out of git (.gitignore: stack/.secrets/), readable by their owner only but the certificate; contents are never printed:"
  run ls -l "$SECRETS_DIR"
}

cmd_build() {
  require_image_name
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
  IMAGE_FROM_THIS_RUN=1
}

cmd_push() {
  require_image_name
  step "push: $API_IMAGE to $(registry_of "$API_IMAGE")"
  if ! run docker push "$API_IMAGE"; then
    die "push failed: for Docker Hub run 'docker login' and set DOCKERHUB_USER (or REGISTRY)"
  fi
  IMAGE_FROM_THIS_RUN=1
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

# Tasks of the stack that were rejected or failed and did not exist before this deploy:
# "SERVICE TASK on NODE: STATE: ERROR", one line each.
new_task_failures() {
  docker exec "$MANAGER" docker stack ps --no-trunc \
    --format '{{.ID}}|{{.Name}}|{{.Node}}|{{.CurrentState}}|{{.Error}}' "$STACK_NAME" 2>/dev/null |
    awk -F'|' 'NR == FNR {before[$1]; next}
      !($1 in before) && $4 ~ /^(Rejected|Failed)/ {
        state = $4; sub(/ [0-9a-zA-Z]+ (seconds|minutes|hours|second|minute|hour) ago$/, "", state)
        sub(/ (less than a|about a|about an) [a-z]+ ago$/, "", state)
        err = $5; gsub(/^"|"$/, "", err)
        print $2 " on " ($3 == "" ? "no node" : $3) ": " state ": " err}' \
      <(printf '%s\n' "$TASKS_BEFORE") -
}

service_image() {  # service_image SERVICE: the image its spec names, without its digest
  docker exec "$MANAGER" docker service inspect -f '{{.Spec.TaskTemplate.ContainerSpec.Image}}' \
    "$1" 2>/dev/null | sed 's/@sha256:[0-9a-f]*$//'
}

api_image_in_spec() { service_image "${STACK_NAME}_api"; }

# rollback_outcome REASON: waits for a rollback in flight (or started within 20 s) to end,
# then prints one line saying where it landed and why, and fails.
rollback_outcome() {
  local reason=$1 start=$SECONDS states svc
  while ((SECONDS - start < WAIT_TIMEOUT)); do
    states=$(service_states)
    if grep -q ' rollback_started$' <<<"$states"; then
      sleep 3
      continue
    fi
    svc=$(awk '$4 ~ /^rollback_(completed|paused)$/ {print $1; exit}' <<<"$states")
    if [ -n "$svc" ]; then
      local image
      image=$(service_image "$svc")
      printf 'ROLLED BACK: %s runs %s again: the update to %s failed: %s\n' \
        "$svc" "$image" "${DEPLOY_IMAGE:-a new spec}" "$reason"
      return 1
    fi
    # No rollback: a failed task ends the wait as it is.
    ((SECONDS - start < 20)) || break
    sleep 2
  done
  printf 'FAILED: %s\n' "$reason"
  return 1
}

# Until every service runs all its replicas and no update is in flight. A task that is rejected
# or fails ends the wait at once with its error; a rollback ends it with where it went back to.
wait_converged() {
  local start=$SECONDS states pending failures
  info "waiting until every service of $STACK_NAME runs all its replicas (at most $WAIT_TIMEOUT s)"
  while true; do
    failures=$(new_task_failures || true)
    if [ -n "$failures" ]; then
      info "$((SECONDS - start)) s: a task did not start:"
      printf '%s\n' "$failures" | sed 's/^/      /'
      rollback_outcome "$(head -n 1 <<<"$failures")"
      return 1
    fi
    states=$(service_states)
    if grep -Eq ' (rollback_started|rollback_completed|rollback_paused)$' <<<"$states"; then
      # The task that caused it, or swarm's own word for it.
      failures=$(new_task_failures || true)
      [ -n "$failures" ] || failures=$(awk '$4 ~ /^rollback/ {print $1}' <<<"$states" | head -n 1 |
        xargs docker exec "$MANAGER" docker service inspect -f '{{.UpdateStatus.Message}}')
      rollback_outcome "$(head -n 1 <<<"$failures")"
      return 1
    fi
    pending=$(awk '$2 != $3 || $3 == 0 || $4 == "updating" || $4 == "paused" {print $1 " " $2 "/" $3 " " $4}' <<<"$states")
    if [ -n "$states" ] && [ -z "$pending" ]; then
      info "converged after $((SECONDS - start)) s"
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

# The image deploy runs: the one named by API_IMAGE or VERSION, the one build or push just made,
# else the one the stack already runs (a redeploy never changes it by surprise).
choose_deploy_image() {
  RUNNING_IMAGE=$(api_image_in_spec || true)
  if [ -n "$API_IMAGE_SET$VERSION_SET${IMAGE_FROM_THIS_RUN:-}" ] || [ -z "$RUNNING_IMAGE" ]; then
    require_image_name
    DEPLOY_IMAGE=$API_IMAGE
  else
    DEPLOY_IMAGE=$RUNNING_IMAGE
    info "neither VERSION nor API_IMAGE set: keeping the image the stack runs"
  fi
  if [ -z "$RUNNING_IMAGE" ]; then
    info "api: $DEPLOY_IMAGE (first deploy)"
  elif [ "$RUNNING_IMAGE" = "$DEPLOY_IMAGE" ]; then
    info "api: $DEPLOY_IMAGE (unchanged)"
  else
    info "api: $RUNNING_IMAGE -> $DEPLOY_IMAGE"
  fi
}

js_string() {  # a JavaScript string literal
  local s=${1//\\/\\\\}
  s=${s//\'/\\\'}
  printf "'%s'" "$s"
}

# mongosh_as_root CID < SCRIPT: runs SCRIPT in the mongo task as the root user, logged in with
# the password the task holds in /run/secrets: it never leaves the container, nor reaches a
# command line.
mongosh_as_root() {
  {
    printf "db.getSiblingDB('admin').auth(%s, fs.readFileSync('/run/secrets/mongo_root_password', 'utf8').trim())\n" \
      "$(js_string "$MONGO_ROOT_USER")"
    cat
  } | docker exec -i "$MANAGER" docker exec -i "$1" mongosh --quiet
}

# The application user with readWrite on MONGO_DB only, its password the one in SECRETS_DIR:
# created when missing (a database initialised with the root user only), its password and role
# set again otherwise. The script goes through stdin, so the password is on no command line.
ensure_app_user() {
  local cid pw out db user action
  cid=$(task_container "$MANAGER" mongo)
  [ -n "$cid" ] || die "no running mongo task on $MANAGER to create the user $MONGO_APP_USER in"
  pw=$(<"$SECRETS_DIR/mongo_app_password")
  db=$(js_string "$MONGO_DB")
  user=$(js_string "$MONGO_APP_USER")
  show_cmd docker exec -i "$MANAGER" docker exec -i "$cid" mongosh --quiet '<' "usersInfo $MONGO_APP_USER"
  out=$(printf 'printjson(db.getSiblingDB(%s).runCommand({usersInfo: %s}))\n' "$db" "$user" |
    mongosh_as_root "$cid" 2>&1) || die "cannot read MongoDB's users as $MONGO_ROOT_USER: $out"
  local roles="[{role: 'readWrite', db: $db}]" command
  if grep -qF "$MONGO_DB.$MONGO_APP_USER" <<<"$out"; then
    action=updateUser
    info "user $MONGO_APP_USER exists in $MONGO_DB: setting its password (from $SECRETS_DIR/mongo_app_password) and role again"
    command="updateUser($user, {pwd: $(js_string "$pw"), roles: $roles})"
  else
    action=createUser
    info "no user $MONGO_APP_USER in $MONGO_DB (a database initialised with the root user only): creating it"
    command="createUser({user: $user, pwd: $(js_string "$pw"), roles: $roles})"
  fi
  show_cmd docker exec -i "$MANAGER" docker exec -i "$cid" mongosh --quiet '<' "$action $MONGO_APP_USER"
  out=$(printf 'printjson(db.getSiblingDB(%s).%s)\n' "$db" "$command" |
    mongosh_as_root "$cid" 2>&1) || action=failed
  out=${out//"$pw"/<password>}
  [ "$action" != failed ] || die "could not set up the MongoDB user $MONGO_APP_USER: $out"
  info "$action $MONGO_APP_USER on $MONGO_DB (readWrite): $(tail -n 1 <<<"$out")"
}

# The application password's copy for the init script of an empty volume: created once and
# never replaced, so rotating the password does not restart MongoDB (ensure_app_user keeps the
# user's password in step with SECRETS_DIR).
ensure_init_secret() {
  local name=${STACK_NAME}_mongo_app_password_init
  if quietly docker exec "$MANAGER" docker secret inspect "$name"; then
    info "secret $name exists (read only when a new volume is initialised)"
  else
    show_cmd docker exec -i "$MANAGER" docker secret create "$name" - '<' "$SECRETS_DIR/mongo_app_password"
    docker exec -i "$MANAGER" docker secret create "$name" - <"$SECRETS_DIR/mongo_app_password" >/dev/null
  fi
}

cmd_deploy() {
  step "deploy: stack $STACK_NAME from stack/docker-stack.yml, through $MANAGER"
  require_node "$MANAGER"
  require_node "$WORKER1"
  require_ingress_ports
  local pw=$SECRETS_DIR/mongo_root_password app_pw=$SECRETS_DIR/mongo_app_password
  local crt=$SECRETS_DIR/tls.crt key=$SECRETS_DIR/tls.key
  if ! [ -s "$pw" ] || ! [ -s "$app_pw" ] || ! [ -s "$crt" ] || ! [ -s "$key" ]; then
    die "secrets missing in $SECRETS_DIR: run '$0 secrets' first"
  fi
  [[ $(<"$app_pw") != *[[:cntrl:]]* ]] || die "$app_pw holds control characters: one line, no newline"
  choose_deploy_image
  local publish="API_IMAGE=$DEPLOY_IMAGE $0 build push"
  [ -n "$API_IMAGE_SET" ] || publish="VERSION=${DEPLOY_IMAGE##*:} $0 build push"
  info "checking that $DEPLOY_IMAGE is in its registry"
  local err
  if ! err=$(image_in_registry "$DEPLOY_IMAGE" 2>&1); then
    die "image $DEPLOY_IMAGE is not in its registry (${err:-not found}); publish it first: $publish (the stack is unchanged)"
  fi
  # Content hashes name the secrets and configs (see the top of docker-stack.yml).
  local mongo_h app_h tls_cert_h tls_key_h nginx_h init_h
  mongo_h=$(short_hash "$pw")
  app_h=$(short_hash "$app_pw")
  tls_cert_h=$(short_hash "$crt")
  tls_key_h=$(short_hash "$key")
  nginx_h=$(short_hash "$STACK_DIR/nginx.conf")
  init_h=$(short_hash "$STACK_DIR/mongo-init.sh")
  CURRENT_OBJECTS=$(printf '%s\n' "${STACK_NAME}_mongo_root_password_$mongo_h" \
    "${STACK_NAME}_mongo_app_password_$app_h" "${STACK_NAME}_mongo_init_$init_h" \
    "${STACK_NAME}_tls_cert_$tls_cert_h" "${STACK_NAME}_tls_key_$tls_key_h" \
    "${STACK_NAME}_nginx_conf_$nginx_h")
  TASKS_BEFORE=$(docker exec "$MANAGER" docker stack ps -q --no-trunc "$STACK_NAME" 2>/dev/null || true)
  # A database that runs already gets the application user before the api switches to it.
  local app_user_done=""
  if [ -n "$(task_container "$MANAGER" mongo)" ]; then
    ensure_app_user
    app_user_done=1
  fi
  ensure_init_secret
  on "$MANAGER" mkdir -p "$REMOTE_DIR/.secrets"
  run docker cp "$STACK_DIR/docker-stack.yml" "$MANAGER:$REMOTE_DIR/docker-stack.yml"
  run docker cp "$STACK_DIR/nginx.conf" "$MANAGER:$REMOTE_DIR/nginx.conf"
  run docker cp "$STACK_DIR/mongo-init.sh" "$MANAGER:$REMOTE_DIR/mongo-init.sh"
  run docker cp "$SECRETS_DIR/." "$MANAGER:$REMOTE_DIR/.secrets/"
  local detach=()
  # Docker 26+ asks to choose; this script waits for convergence itself, bounded.
  if docker exec "$MANAGER" docker stack deploy --help 2>/dev/null | grep -q -- '--detach'; then
    detach=(--detach=true)
  fi
  local status=0
  run docker exec -w "$REMOTE_DIR" \
    -e "STACK_NAME=$STACK_NAME" -e "API_IMAGE=$DEPLOY_IMAGE" -e "API_REPLICAS=$API_REPLICAS" \
    -e "MONGO_ROOT_USER=$MONGO_ROOT_USER" -e "MONGO_APP_USER=$MONGO_APP_USER" -e "MONGO_DB=$MONGO_DB" \
    -e "HTTP_PORT=$HTTP_PORT" -e "HTTPS_PORT=$HTTPS_PORT" \
    -e "MONGO_PASSWORD_HASH=$mongo_h" -e "MONGO_APP_PASSWORD_HASH=$app_h" -e "MONGO_INIT_HASH=$init_h" \
    -e "TLS_CERT_HASH=$tls_cert_h" -e "TLS_KEY_HASH=$tls_key_h" -e "NGINX_CONF_HASH=$nginx_h" \
    "$MANAGER" docker stack deploy --with-registry-auth --prune "${detach[@]}" \
    -c docker-stack.yml "$STACK_NAME" || status=$?
  # The swarm keeps the secrets (encrypted in its raft log); the plain files go.
  on "$MANAGER" rm -rf "$REMOTE_DIR/.secrets"
  [ "$status" -eq 0 ] || die "docker stack deploy failed"
  wait_converged || status=$?
  [ "$status" -ne 0 ] || [ -n "$app_user_done" ] || ensure_app_user
  prune_old_versions
  on "$MANAGER" docker service ls --filter "label=com.docker.stack.namespace=$STACK_NAME"
  on "$MANAGER" docker stack ps --filter desired-state=running "$STACK_NAME"
  [ "$status" -eq 0 ] || die "deploy of $STACK_NAME failed (see above)"
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
  local deployed_image=""
  if [ "$(node_state "$MANAGER")" = running ] && [ "$(swarm_state "$MANAGER")" = active ]; then
    deployed_image=$(api_image_in_spec || true)
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
  info "removed with the nodes: the stack's services, its swarm secrets and the MongoDB data"
  info "kept: the passwords and certificate in $SECRETS_DIR (delete it for new ones)"
  local backups=0
  [ ! -d "$BACKUP_DIR" ] || backups=$(find "$BACKUP_DIR" -maxdepth 1 -name '*.archive.gz' | wc -l)
  info "kept: $backups backup(s) in $BACKUP_DIR"
  if [ -n "$deployed_image" ]; then
    info "kept: the image it ran, $deployed_image, in its registry"
  fi
}

# --- backup, restore, drill: stack/backup.sh ----------------------------------------------------
# shellcheck source=stack/backup.sh
source "$STACK_DIR/backup.sh"

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

cmd_usage() {
  cat <<EOF
usage: stack/swarm.sh STEP [STEP...]      (stack/swarm.sh help: every step and setting)
steps: nodes swarm labels secrets build push deploy verify backup [FILE] restore FILE drill
       status down all help
EOF
}

cmd_help() {
  cat <<EOF
usage: stack/swarm.sh STEP [STEP...]

Deploys the usersapi stack ($STACK_NAME) on a three-node swarm of docker-in-docker nodes. The
steps given run in order; the first that fails stops the run with its exit status. An unknown
step refuses the whole list before any step runs (exit 2).

steps (all = nodes swarm labels secrets build push deploy verify):
  nodes    create $MANAGER, $WORKER1 (publishes $HTTP_PORT and $HTTPS_PORT) and $WORKER2
           from $DIND_IMAGE on the bridge network $NODE_NETWORK
  swarm    init the swarm on $MANAGER, join the two workers
  labels   app=database on $MANAGER, app=ingress on $WORKER1, app=api on $WORKER2
  secrets  MongoDB root and application passwords and a self-signed TLS certificate in
           SECRETS_DIR (once)
  build    docker build (BuildKit) of the API image as API_IMAGE
  push     docker push API_IMAGE
  deploy   check the image is in its registry and the ingress ports, copy the stack file,
           nginx.conf and secrets to $MANAGER, ensure the MongoDB application user exists,
           docker stack deploy, wait until every service has its replicas. Without VERSION
           or API_IMAGE it keeps the image the stack runs
  verify   check the running stack; one PASS/FAIL line per check, non-zero exit on a FAIL
  backup [FILE]  mongodump of $MONGO_DB to FILE (default BACKUP_DIR/$STACK_NAME-<UTC time>.archive.gz)
  restore FILE   check FILE, then replace $MONGO_DB's collections with the archive's
  drill    create users, back up, change them, restore, check (PASS/FAIL lines)
  status   docker node ls, docker service ls, docker stack ps
  down     remove the stack, the nodes and their network
  all      every step from nodes to verify, in order
  help     this text

settings (environment variables; current value, default in brackets):
  STACK_NAME      $STACK_NAME  [semana4]
  VERSION         $VERSION  [__version__ in usersapi.py]
  DOCKERHUB_USER  ${DOCKERHUB_USER:-(unset)}  [none: set it, REGISTRY or API_IMAGE]
  REGISTRY        ${REGISTRY:-(unset)}  [docker.io/\$DOCKERHUB_USER]
  IMAGE_NAME      $IMAGE_NAME  [usersapi]
  API_IMAGE       ${API_IMAGE:-(unset)}  [\$REGISTRY/\$IMAGE_NAME:\$VERSION]
  API_REPLICAS    $API_REPLICAS  [2]
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
  MONGO_APP_USER  $MONGO_APP_USER  [usersapi; the API's MongoDB user]
  MONGO_DB        $MONGO_DB  [usersdb]
  BACKUP_DIR      $BACKUP_DIR  [backups]
  TLS_DAYS        $TLS_DAYS  [365]
  WAIT_TIMEOUT    $WAIT_TIMEOUT  [300; seconds deploy and verify wait at most]
  PYTHON          $PYTHON  [python3; with Playwright, for verify's browser check]
  CHROMIUM        ${CHROMIUM:-/usr/bin/chromium}  [the browser verify's browser check drives]
EOF
}

STEP_NAMES=" nodes swarm labels secrets build push deploy verify backup restore drill status down all help "

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
  for name in API_REPLICAS WAIT_TIMEOUT TLS_DAYS; do
    value=${!name}
    [[ $value =~ ^[0-9]+$ ]] || usage_error "$name must be a whole number, not '$value'"
  done
}

# main STEP [ARG] ...: the whole list is checked before the first step runs.
main() {
  [ $# -gt 0 ] || { cmd_usage >&2; exit 2; }
  local steps=() files=() arg
  while [ $# -gt 0 ]; do
    arg=$1
    shift
    [[ $arg != -h && $arg != --help ]] || arg=help
    is_step "$arg" || usage_error "unknown step: $arg"
    steps+=("$arg")
    case $arg in
      restore)
        if [ $# -eq 0 ] || is_step "$1"; then usage_error "restore needs the archive: restore FILE"; fi
        files+=("$1")
        shift
        ;;
      backup)
        if [ $# -gt 0 ] && ! is_step "$1"; then files+=("$1"); shift; else files+=(""); fi
        ;;
      *) files+=("") ;;
    esac
  done
  check_settings
  local i
  for i in "${!steps[@]}"; do
    case ${steps[i]} in
      backup | restore) "cmd_${steps[i]}" "${files[i]}" ;;
      *) "cmd_${steps[i]}" ;;
    esac
  done
}

# Sourced (as tools/evidence.sh does), the script only defines its settings and functions.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  main "$@"
fi
