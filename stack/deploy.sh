# shellcheck shell=bash
# The labels, secrets, build, push and deploy steps of stack/swarm.sh, which sources this file.
#
# Uses swarm.sh's settings (STACK_NAME, DATABASE_NODE, INGRESS_NODE, API_NODE, SECRETS_DIR,
# PUBLIC_HOST, TLS_DAYS, TLS_CERT_FILE, TLS_KEY_FILE, TLS_CERT_PATH, TLS_KEY_PATH, API_IMAGE,
# API_IMAGE_SET, VERSION, VERSION_SET, BASE_IMAGE, API_REPLICAS, MONGO_ROOT_USER,
# MONGO_BACKUP_USER, MONGO_DB, APP_USERS, HTTP_PORT, HTTPS_PORT, RATE_LIMIT, RATE_BURST,
# CONN_LIMIT, API_KEYS_PATH, WAIT_TIMEOUT, CALL_TIMEOUT, ENDPOINT_CONTEXT, PROJECT_DIR,
# STACK_DIR) and helpers (step, info, die, run, run_sw, run_sw_quiet, sw, show_sw, show_cmd,
# quietly, bounded, require_swarm, make_workdir, snapshot, service_json, service_image,
# state_py, api_nodes), tasks.sh's (task_start, task_python) and keys.sh's (make_api_keys,
# require_key_file). Sets swarm.sh's IMAGE_FROM_THIS_RUN (build and push: deploy then uses
# API_IMAGE).

# --- labels -----------------------------------------------------------------------------------
APP_LABELS=" database ingress api "
SPREAD_LABEL=usersapi.api-node  # one value per api node: the api's replicas spread over them

cmd_labels() {
  step "labels: app=database on $DATABASE_NODE, app=ingress on $INGRESS_NODE, app=api on $(api_nodes)"
  require_swarm
  local known node want id host app ids=()
  known=$(sw node ls --format '{{.Hostname}}') || die "cannot list the swarm's nodes"
  mapfile -t ids < <(sw node ls -q)
  for node in "$DATABASE_NODE" "$INGRESS_NODE" $(api_nodes); do
    grep -qxF -- "$node" <<<"$known" || die "no node $node in this swarm (docker node ls: $(xargs <<<"$known"))"
  done
  run_sw_quiet node update --label-add app=database "$DATABASE_NODE"
  run_sw_quiet node update --label-add app=ingress "$INGRESS_NODE"
  for node in $(api_nodes); do
    run_sw_quiet node update --label-add app=api --label-add "$SPREAD_LABEL=$node" "$node"
  done
  # A node that had one of these labels and is not named now loses it, so the stack is placed
  # exactly where the settings say.
  while read -r id host app; do
    want=$host
    [[ " $DATABASE_NODE $INGRESS_NODE $(api_nodes) " == *" $want "* ]] && continue
    [[ -n $app && $APP_LABELS == *" $app "* ]] || continue
    run_sw_quiet node update --label-rm app "$id"
    info "$host is no longer app=$app"
  done < <(sw node inspect --format '{{.ID}} {{.Description.Hostname}} {{index .Spec.Labels "app"}}' "${ids[@]}")
  run_sw node inspect --format '{{.Description.Hostname}}  role={{.Spec.Role}}  labels={{json .Spec.Labels}}' "${ids[@]}"
}

# --- secrets ----------------------------------------------------------------------------------
subject_alt_names() {  # subject_alt_names HOST: HOST, localhost and 127.0.0.1, each once
  local entry out=()
  for entry in "$1" localhost 127.0.0.1; do
    if [[ $entry =~ ^[0-9.]+$|: ]]; then entry=IP:$entry; else entry=DNS:$entry; fi
    [[ " ${out[*]} " == *" $entry "* ]] || out+=("$entry")
  done
  local IFS=,
  printf '%s' "${out[*]}"
}

PASSWORD_FILES="mongo_root_password mongo_app_password mongo_backup_password"

cmd_secrets() {
  step "secrets: MongoDB root, application and backup passwords, the API keys and a self-signed TLS certificate in $SECRETS_DIR"
  local crt=$SECRETS_DIR/tls.crt key=$SECRETS_DIR/tls.key name
  (umask 077 && mkdir -p "$SECRETS_DIR")
  for name in $PASSWORD_FILES; do
    if [ -s "$SECRETS_DIR/$name" ]; then
      info "$name exists, reusing it ($SECRETS_DIR/$name)"
    else
      info "generating $name: random, openssl rand, 48 hex characters"
      (umask 077 && openssl rand -hex 24 | tr -d '\n' >"$SECRETS_DIR/$name")
    fi
  done
  make_api_keys
  if [ -n "$TLS_CERT_FILE" ]; then
    info "TLS certificate: yours, TLS_CERT_FILE=$TLS_CERT_FILE (no self-signed one made)"
    crt=$TLS_CERT_FILE
  elif [ -s "$crt" ] && [ -s "$key" ]; then
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
  info "kept out of git (.gitignore: stack/.secrets/), readable by their owner only but the certificate; contents are never printed (api_keys holds the keys' SHA-256, never a key):"
  run ls -l "$SECRETS_DIR"
}

# --- build, push ------------------------------------------------------------------------------
require_image_name() {  # build, push and deploy need to know whose image it is
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

# image_in_registry IMAGE: asks the registry for the image's manifest with this machine's
# credentials, the ones --with-registry-auth hands to the nodes (plain http only for registries
# this machine's engine treats as insecure).
image_in_registry() {
  local registry insecure=()
  registry=$(registry_of "$1")
  if docker info -f '{{range .RegistryConfig.IndexConfigs}}{{if not .Secure}}{{.Name}} {{end}}{{end}}' 2>/dev/null |
    tr ' ' '\n' | grep -qxF "$registry"; then
    insecure=(--insecure)
  fi
  bounded "$CALL_TIMEOUT" docker manifest inspect "${insecure[@]}" "$1" >/dev/null
}

cmd_build() {
  require_image_name
  step "build: $API_IMAGE from $PROJECT_DIR/Dockerfile (BuildKit, on this machine)"
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

# --- your own certificate -----------------------------------------------------------------------
CERT_WARN_DAYS=30

# check_tls_files: TLS_CERT_FILE and TLS_KEY_FILE, when given, are a certificate and its key
# that the ingress can serve to PUBLIC_HOST now: refused before anything changes when the key
# is not the certificate's, the certificate has expired or does not name PUBLIC_HOST; a
# warning when it expires within CERT_WARN_DAYS days. swarm.sh's main calls it once, before
# the first step of a run that deploys (deploy, all, api-key).
check_tls_files() {
  [ -n "$TLS_CERT_FILE" ] || return 0
  local crt=$TLS_CERT_FILE key=$TLS_KEY_FILE name end match
  for name in "$crt" "$key"; do
    [ -f "$name" ] && [ -r "$name" ] || die "$name: no such readable file (TLS_CERT_FILE, TLS_KEY_FILE): nothing changed"
  done
  end=$(openssl x509 -in "$crt" -noout -enddate 2>/dev/null) ||
    die "TLS_CERT_FILE=$crt holds no PEM certificate: nothing changed"
  end=${end#notAfter=}
  openssl pkey -in "$key" -noout -passin pass: 2>/dev/null ||
    die "TLS_KEY_FILE=$key holds no PEM private key that nginx can read (an encrypted key needs its passphrase, which nginx cannot be given here): nothing changed"
  [ "$(openssl x509 -in "$crt" -noout -pubkey)" = "$(openssl pkey -in "$key" -pubout)" ] ||
    die "TLS_KEY_FILE=$key is not the key of the certificate in TLS_CERT_FILE=$crt (their public keys differ): nothing changed"
  openssl x509 -in "$crt" -noout -checkend 0 >/dev/null ||
    die "the certificate in TLS_CERT_FILE=$crt expired on $end: renew it (docs/deploying.md, \"Your own certificate\"): nothing changed"
  if [[ $PUBLIC_HOST =~ ^[0-9.]+$|: ]]; then
    match=$(openssl x509 -in "$crt" -noout -checkip "$PUBLIC_HOST")
  else
    match=$(openssl x509 -in "$crt" -noout -checkhost "$PUBLIC_HOST")
  fi
  [[ $match != *"NOT match"* ]] ||
    die "the certificate in TLS_CERT_FILE=$crt does not cover PUBLIC_HOST=$PUBLIC_HOST (its names: $(cert_names "$crt")): nothing changed"
  if ! openssl x509 -in "$crt" -noout -checkend $((CERT_WARN_DAYS * 86400)) >/dev/null; then
    printf 'WARNING: the certificate in TLS_CERT_FILE=%s expires on %s, in less than %d days: renew it soon\n' "$crt" "$end" "$CERT_WARN_DAYS" >&2
  fi
  info "TLS certificate: TLS_CERT_FILE=$crt ($(cert_names "$crt"); until $end), its key in TLS_KEY_FILE, valid for $PUBLIC_HOST"
}

# keep_served_certificate WORKDIR SECRET: a deploy without TLS_CERT_FILE would give the ingress
# the self-signed certificate (SECRET); when the ingress serves another one now (yours, given
# to an earlier deploy), that would swap it by surprise: refused before anything changes.
keep_served_certificate() {
  [ -z "$TLS_CERT_FILE" ] || return 0
  service_json ingress "$1/ingress.json" 2>/dev/null || return 0  # no ingress yet
  local served
  served=$(state_py secret-name "$1/ingress.json" tls.crt 2>/dev/null) || return 0
  [ "$served" != "$2" ] || return 0
  die "the ingress serves a certificate other than the self-signed one in $SECRETS_DIR (secret $served): give yours again, TLS_CERT_FILE=... TLS_KEY_FILE=... $0 deploy; to go back to the self-signed one, name it: TLS_CERT_FILE=$TLS_CERT_PATH TLS_KEY_FILE=$TLS_KEY_PATH $0 deploy (nothing changed)"
}

cert_names() {  # the certificate's subject alternative names, or its subject
  local names
  names=$(openssl x509 -in "$1" -noout -ext subjectAltName 2>/dev/null | sed -n '2,$p' | xargs)
  printf '%s' "${names:-$(openssl x509 -in "$1" -noout -subject 2>/dev/null)}"
}

# --- deploy -----------------------------------------------------------------------------------
short_hash() { sha256sum "$1" | cut -c1-12; }

# The image deploy runs: the one named by API_IMAGE or VERSION, the one build or push just made,
# else the one the stack already runs (a redeploy never changes it by surprise). Prints it.
choose_deploy_image() {
  local running
  running=$(service_image api 2>/dev/null || true)
  local chosen=$running
  if [ -n "$API_IMAGE_SET$VERSION_SET${IMAGE_FROM_THIS_RUN:-}" ] || [ -z "$running" ]; then
    require_image_name
    chosen=$API_IMAGE
  else
    info "neither VERSION nor API_IMAGE set: keeping the image the stack runs" >&2
  fi
  if [ -z "$running" ]; then
    info "api: $chosen (first deploy)" >&2
  elif [ "$running" = "$chosen" ]; then
    info "api: $chosen (unchanged)" >&2
  else
    info "api: $running -> $chosen" >&2
  fi
  printf '%s' "$chosen"
}

# The backup user's credentials as the MongoDB Database Tools read them (--config: a YAML
# file), a secret this script makes from SECRETS_DIR/mongo_backup_password. A YAML double-
# quoted string: backslash and double quote escaped, control characters refused earlier.
backup_tools_config() {
  local pw
  pw=$(<"$SECRETS_DIR/mongo_backup_password")
  pw=${pw//\\/\\\\}
  printf 'password: "%s"\n' "${pw//\"/\\\"}"
}

# ensure_secret NAME KIND < CONTENT: a secret of this stack (docker stack rm removes it),
# created from stdin unless it exists; swarm secrets are immutable, so NAME carries a hash.
ensure_secret() {
  if quietly sw secret inspect "$1"; then
    info "secret $1 exists"
    cat >/dev/null
    return 0
  fi
  show_sw secret create --label "com.docker.stack.namespace=$STACK_NAME" --label "usersapi.secret=$2" "$1" - '<' "<$2>"
  sw secret create --label "com.docker.stack.namespace=$STACK_NAME" --label "usersapi.secret=$2" "$1" - >/dev/null ||
    die "could not create the secret $1"
}

# set_mongo_users IMAGE ROOT_SECRET APP_USER APP_SECRET BACKUP_SECRET [OLD_USER]: in a task on
# the stack's back network, as MongoDB's root (its password: the secret the mongo service
# holds), give APP_USER readWrite on MONGO_DB and APP_SECRET's password, give the backup user
# the backup and restore roles and its password, and lock OLD_USER out (a random password
# nobody keeps). stack/mongo_tasks.py; no password is on a command line or in the output.
set_mongo_users() {
  local image=$1 root_secret=$2 app_user=$3 app_secret=$4 backup_secret=$5 old=${6:-} cid
  task_start cid admin "$image" --network "${STACK_NAME}_back" \
    "$(secret_mount "$root_secret" mongo_root_password)" \
    "$(secret_mount "$app_secret" app_password)" \
    "$(secret_mount "$backup_secret" backup_config)"
  local args=(users --root-user "$MONGO_ROOT_USER" --root-password-file /run/secrets/mongo_root_password
    --app "$MONGO_DB" "$app_user" /run/secrets/app_password
    --backup "$MONGO_BACKUP_USER" /run/secrets/backup_config)
  [ -z "$old" ] || args+=(--lock-out "$MONGO_DB" "$old")
  task_python "$WAIT_TIMEOUT" "$cid" mongo_tasks.py "${args[@]}" | sed 's/^/    /' ||
    die "could not set the MongoDB users (see above)"
}

is_app_user() { [[ " ${APP_USERS[*]} " == *" $1 "* ]]; }
other_app_user() { if [ "$1" = "${APP_USERS[0]}" ]; then echo "${APP_USERS[1]}"; else echo "${APP_USERS[0]}"; fi; }

cmd_deploy() {
  step "deploy: stack $STACK_NAME from stack/docker-stack.yml, through context $ENDPOINT_CONTEXT"
  require_swarm
  local name
  for name in $PASSWORD_FILES; do
    [ -s "$SECRETS_DIR/$name" ] || die "secrets missing in $SECRETS_DIR ($name): run '$0 secrets' first"
  done
  for name in "$TLS_CERT_PATH" "$TLS_KEY_PATH"; do
    [ -n "$TLS_CERT_FILE" ] || [ -s "$name" ] || die "secrets missing in $SECRETS_DIR ($(basename "$name")): run '$0 secrets' first"
  done
  for name in $PASSWORD_FILES; do
    [[ $(<"$SECRETS_DIR/$name") != *[[:cntrl:]]* ]] || die "$SECRETS_DIR/$name holds control characters: one line, no newline"
  done
  require_key_file
  local image
  image=$(choose_deploy_image)
  local publish="API_IMAGE=$image $0 build push"
  [ -n "$API_IMAGE_SET" ] || publish="VERSION=${image##*:} $0 build push"
  info "checking that $image is in its registry"
  local err
  if ! err=$(image_in_registry "$image" 2>&1); then
    die "image $image is not in its registry (${err:-not found}); publish it first: $publish (the stack is unchanged)"
  fi
  local work
  make_workdir work
  # Content hashes name the secrets and configs (see the top of docker-stack.yml).
  local root_h app_h cert_h key_h nginx_h backup_h keys_h
  root_h=$(short_hash "$SECRETS_DIR/mongo_root_password")
  app_h=$(short_hash "$SECRETS_DIR/mongo_app_password")
  cert_h=$(short_hash "$TLS_CERT_PATH")
  key_h=$(short_hash "$TLS_KEY_PATH")
  keys_h=$(short_hash "$API_KEYS_PATH")
  nginx_h=$(short_hash "$STACK_DIR/nginx.conf")
  backup_h=$(backup_tools_config | sha256sum | cut -c1-12)
  local app_secret=${STACK_NAME}_mongo_app_password_$app_h
  local root_secret=${STACK_NAME}_mongo_root_password_$root_h
  local backup_secret=${STACK_NAME}_mongo_backup_$backup_h

  # The api's MongoDB user: the same while its password is unchanged; a new password goes to
  # the other user, the api moves to it, and then the old one is locked out.
  keep_served_certificate "$work" "${STACK_NAME}_tls_cert_$cert_h"

  local current_user="" current_secret="" user old=""
  if service_json api "$work/api.json" 2>/dev/null; then
    current_user=$(state_py env "$work/api.json" MONGO_USER)
    current_secret=$(state_py secret-name "$work/api.json" mongo_app_password || true)
  fi
  user=${APP_USERS[0]}
  if [ -n "$current_user" ]; then
    if [ "$current_secret" = "$app_secret" ] && is_app_user "$current_user"; then
      user=$current_user
      info "MongoDB user of the api: $user (its password is unchanged)"
    else
      user=$(other_app_user "$current_user")
      old=$current_user
      info "new application password: the api moves from MongoDB user $old to $user, then $old is locked out"
    fi
  fi
  ensure_secret "$app_secret" mongo_app_password <"$SECRETS_DIR/mongo_app_password"
  backup_tools_config | ensure_secret "$backup_secret" mongo_backup

  # A database that runs already gets the users before the api moves to one.
  local users_done=""
  if service_json mongo "$work/mongo.json" 2>/dev/null; then
    set_mongo_users "$image" "$(state_py secret-name "$work/mongo.json" mongo_root_password)" \
      "$user" "$app_secret" "$backup_secret"
    users_done=1
  fi

  sw stack ps -q --no-trunc "$STACK_NAME" >"$work/tasks-before" 2>/dev/null || true
  local vars=(STACK_NAME="$STACK_NAME" API_IMAGE="$image" API_REPLICAS="$API_REPLICAS"
    API_MONGO_USER="$user" MONGO_ROOT_USER="$MONGO_ROOT_USER" MONGO_DB="$MONGO_DB"
    HTTP_PORT="$HTTP_PORT" HTTPS_PORT="$HTTPS_PORT" RATE_LIMIT="$RATE_LIMIT"
    RATE_BURST="$RATE_BURST" CONN_LIMIT="$CONN_LIMIT" SECRETS_DIR="$SECRETS_DIR"
    TLS_CERT_FILE="$TLS_CERT_PATH" TLS_KEY_FILE="$TLS_KEY_PATH"
    MONGO_PASSWORD_HASH="$root_h" MONGO_APP_PASSWORD_HASH="$app_h" TLS_CERT_HASH="$cert_h"
    TLS_KEY_HASH="$key_h" NGINX_CONF_HASH="$nginx_h" API_KEYS_HASH="$keys_h")
  # What this deploy asks of each service, which convergence then finds in its spec.
  local expect=(--expect api image "$image" --expect api replicas "$API_REPLICAS"
    --expect api secret "$app_secret" --expect api secret "${STACK_NAME}_api_keys_$keys_h"
    --expect api env "MONGO_USER=$user"
    --expect api env "MONGO_DB=$MONGO_DB" --expect mongo secret "$root_secret"
    --expect ingress config "${STACK_NAME}_nginx_conf_$nginx_h"
    --expect ingress secret "${STACK_NAME}_tls_cert_$cert_h" --expect ingress secret "${STACK_NAME}_tls_key_$key_h"
    --expect ingress port "$HTTP_PORT" --expect ingress port "$HTTPS_PORT"
    --expect ingress env "RATE_LIMIT=$RATE_LIMIT" --expect ingress env "RATE_BURST=$RATE_BURST"
    --expect ingress env "CONN_LIMIT=$CONN_LIMIT")
  local detach=()
  # Docker 26+ asks to choose; this script waits for convergence itself, bounded.
  if docker stack deploy --help 2>/dev/null | grep -q -- '--detach'; then detach=(--detach=true); fi
  local stack_deploy=(docker --context "$ENDPOINT_CONTEXT" stack deploy --with-registry-auth --prune
    "${detach[@]}" -c "$STACK_DIR/docker-stack.yml" "$STACK_NAME")
  show_cmd env "${vars[@]}" "${stack_deploy[@]}"
  bounded "$WAIT_TIMEOUT" env "${vars[@]}" "${stack_deploy[@]}" || die "docker stack deploy failed (see above)"
  local status=0
  wait_converged "$image" "$work" "${expect[@]}" || status=$?
  if [ "$status" -eq 0 ]; then
    if [ -z "$users_done" ]; then
      set_mongo_users "$image" "$root_secret" "$user" "$app_secret" "$backup_secret"
    elif [ -n "$old" ]; then
      set_mongo_users "$image" "$root_secret" "$user" "$app_secret" "$backup_secret" "$old"
    fi
    prune_old_versions "$root_secret" "$app_secret" "$backup_secret" "${STACK_NAME}_api_keys_$keys_h" \
      "${STACK_NAME}_tls_cert_$cert_h" "${STACK_NAME}_tls_key_$key_h" "${STACK_NAME}_nginx_conf_$nginx_h"
  elif [ -n "$old" ]; then
    info "the api still logs in as $old, which keeps its password"
  fi
  run_sw service ls --filter "label=com.docker.stack.namespace=$STACK_NAME"
  run_sw stack ps --filter desired-state=running "$STACK_NAME"
  [ "$status" -eq 0 ] || die "deploy of $STACK_NAME failed (see above)"
}

# wait_converged IMAGE WORKDIR EXPECTATIONS...: until every service's spec holds what this
# deploy asked for and every task it runs was made from that spec (stack/swarm_state.py
# convergence). A task that is
# rejected or fails ends the wait with its error (after 20 s in which a rollback may begin);
# a rollback ends it with one line naming the image it went back to and why.
wait_converged() {
  local image=$1 work=$2 start=$SECONDS out verdict detail last="" failed_at=""
  shift 2
  info "waiting until every service of $STACK_NAME runs this deploy's spec (at most $WAIT_TIMEOUT s)"
  while true; do
    if snapshot "$work"; then
      out=$(state_py convergence --stack "$STACK_NAME" --image "$image" \
        --before "$work/tasks-before" "$@" "$work")
    else
      out="pending the swarm did not answer"
    fi
    verdict=${out%% *}
    detail=${out#* }
    case $verdict in
      converged)
        info "converged after $((SECONDS - start)) s: $detail"
        return 0
        ;;
      rolled-back)
        printf 'ROLLED BACK: %s\n' "$detail"
        return 1
        ;;
      failed)
        if [ -z "$failed_at" ]; then
          failed_at=$SECONDS
          info "$((SECONDS - start)) s: a task did not start: $detail"
        elif ((SECONDS - failed_at >= 20)); then
          printf 'FAILED: %s\n' "$detail"
          return 1
        fi
        ;;
      *)
        [ "$out" = "$last" ] || info "$((SECONDS - start)) s: $detail"
        ;;
    esac
    last=$out
    if ((SECONDS - start >= WAIT_TIMEOUT)); then
      info "not converged after $WAIT_TIMEOUT s: $detail"
      run_sw stack ps --no-trunc --filter desired-state=running "$STACK_NAME" || true
      return 1
    fi
    sleep 3
  done
}

# prune_old_versions NAME...: this stack's secrets and configs but the ones named, left over
# from earlier deploys (swarm refuses to remove one still in use, which then stays).
prune_old_versions() {
  local kind name current
  current=$(printf '%s\n' "$@")
  for kind in secret config; do
    for name in $(sw "$kind" ls --filter "label=com.docker.stack.namespace=$STACK_NAME" --format '{{.Name}}'); do
      grep -qxF -- "$name" <<<"$current" && continue
      if sw "$kind" rm "$name" >/dev/null 2>&1; then
        info "removed the $kind $name (an earlier version)"
      else
        info "kept the $kind $name: still in use"
      fi
    done
  done
}
