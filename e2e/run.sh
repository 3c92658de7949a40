#!/usr/bin/env bash
# The end-to-end run (tox -e e2e, from .ci/run after the Docker lab is up): the stack deployed
# for real, twice, under names, ports and folders of its own, all removed at the end even when
# a step fails; other containers on this engine are never touched.
#
#  1. The lab: stack/swarm.sh all drill as stack usersapi-e2e, its passwords holding a quote,
#     ';', '#' and a space; a backup, a restore, a rotation of the application password, and an
#     API key added then revoked, all under a steady load (e2e/load.py): no failed request, no
#     lost acknowledged write, the new key answered 200 and, revoked, 401; then a certificate of
#     its own (a CA's, with its chain) replaces the self-signed one under the same load, whose
#     failed requests and longest gap are measured (the ingress is stop-first); then down,
#     which backs the users up first.
#  2. A swarm made without swarm.sh: three docker-in-docker nodes (usersapi-own-n1..3) joined
#     by hand, the manager reached only through the Docker context usersapi-own (plain tcp on
#     the nodes' private network: a lab endpoint); stack/swarm.sh labels secrets deploy verify
#     drill with a certificate of its own (TLS_CERT_FILE), then down, which leaves the three
#     nodes running; a `docker` that records every call (e2e/record_docker.py) shows that none
#     touched a node container.
#
# Settings: the lab's stack comes from the environment tox sets (STACK_NAME, HTTP_PORT, ...);
# E2E_DIR (default: a new temporary folder) holds secrets, backups and records;
# E2E_OWN_HTTP_PORT and E2E_OWN_HTTPS_PORT (18081, 18444) are the second swarm's ports.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

E2E_DIR=${E2E_DIR:-$(mktemp -d)}
OWN_PREFIX=usersapi-own
OWN_NODES=("$OWN_PREFIX-n1" "$OWN_PREFIX-n2" "$OWN_PREFIX-n3")
OWN_NETWORK=$OWN_PREFIX-net
OWN_CONTEXT=$OWN_PREFIX
OWN_HTTP_PORT=${E2E_OWN_HTTP_PORT:-18081}
OWN_HTTPS_PORT=${E2E_OWN_HTTPS_PORT:-18444}
DIND_IMAGE=${DIND_IMAGE:-docker:27-dind}
DIND_RUN_OPTS=${DIND_RUN_OPTS:---privileged}
LOAD_PID=""

say() { printf '\n######## e2e: %s\n' "$*"; }
fail() { printf 'E2E FAILED: %s\n' "$*" >&2; exit 1; }
swarm_sh() { bash stack/swarm.sh "$@"; }
export PYTHONPATH=stack  # e2e/load.py finds stack/api_checks.py
load_py() { python3 e2e/load.py "$@"; }

# --- clean-up: only what this run made --------------------------------------------------------
cleanup() {
  local rc=$?
  trap '' INT TERM  # the clean-up itself is not cut short
  set +e
  [ -z "$LOAD_PID" ] || kill "$LOAD_PID" 2>/dev/null
  say "clean-up"
  local prefix=${NODE_PREFIX:-$STACK_NAME}
  if docker context inspect "$prefix-lab" >/dev/null 2>&1 || docker inspect "$prefix-manager" >/dev/null 2>&1; then
    swarm_sh down --purge >"$E2E_DIR/cleanup-lab.log" 2>&1 || echo "lab down --purge failed: $E2E_DIR/cleanup-lab.log"
  fi
  local node
  for node in "${OWN_NODES[@]}"; do
    ! docker inspect "$node" >/dev/null 2>&1 || docker rm -f -v "$node" >/dev/null
  done
  ! docker network inspect "$OWN_NETWORK" >/dev/null 2>&1 || docker network rm "$OWN_NETWORK" >/dev/null
  ! docker context inspect "$OWN_CONTEXT" >/dev/null 2>&1 || docker context rm -f "$OWN_CONTEXT" >/dev/null
  echo "removed what this run made; its records stay in $E2E_DIR"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start_load NAME ... stop_load: e2e/load.py loads the API meanwhile, with the stack's write
# key, and writes what happened to E2E_DIR/load-NAME.json for its check (check_load NAME).
start_load() {
  python3 e2e/load.py run "$HTTPS_URL" --key-file "$SECRETS_DIR/api_key" --out "$E2E_DIR/load-$1.json" &
  LOAD_PID=$!
  sleep 10  # a steady load before the change
}

stop_load() {
  sleep 10  # and after it
  kill -TERM "$LOAD_PID"
  wait "$LOAD_PID"
  LOAD_PID=""
}

check_load() {
  local name=$1
  shift
  load_py check "$HTTPS_URL" "$E2E_DIR/load-$name.json" --key-file "$SECRETS_DIR/api_key" "$@"
}

# status_with KEY_FILE: the status of GET /users?limit=1 with the key in KEY_FILE, which curl
# reads as a header file (the key on no command line).
status_with() {
  local header=$E2E_DIR/key.header
  (umask 077 && printf 'Authorization: Bearer %s\n' "$(<"$1")" >"$header")
  curl -sk -o /dev/null -w '%{http_code}' -H @"$header" "$HTTPS_URL/users?limit=1"
  rm -f "$header"
}

# own_certificate DIR: a CA and a certificate it signs for localhost (DIR/fullchain.pem, the
# certificate then the CA's, and DIR/privkey.pem, as certbot writes them).
own_certificate() {
  local dir=$1
  mkdir -p "$dir"
  openssl req -x509 -newkey rsa:2048 -nodes -days 90 -subj "/CN=e2e test CA" \
    -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout "$dir/privkey.pem" \
    -out "$dir/leaf.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$dir/leaf.ext"
  openssl x509 -req -in "$dir/leaf.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
    -days 90 -extfile "$dir/leaf.ext" -out "$dir/leaf.crt" 2>/dev/null
  cat "$dir/leaf.crt" "$dir/ca.crt" >"$dir/fullchain.pem"
}

# --- 1. the lab -------------------------------------------------------------------------------
HTTPS_URL=https://localhost:$HTTPS_PORT

say "lab: stack/swarm.sh all drill (stack $STACK_NAME, ports $HTTP_PORT and $HTTPS_PORT)"
# Passwords holding a quote, ';', '#' and a space: MongoDB, the api, the users' task and the
# Database Tools' --config file get them from files and stdin only (secrets keeps them).
(umask 077 && mkdir -p "$SECRETS_DIR" &&
  printf '%s' "root's; #pw 1" >"$SECRETS_DIR/mongo_root_password" &&
  printf '%s' "app's; #pw 2" >"$SECRETS_DIR/mongo_app_password" &&
  printf '%s' "backup's; #pw 3" >"$SECRETS_DIR/mongo_backup_password")
swarm_sh all drill

say "lab: a restore under load"
swarm_sh backup "$E2E_DIR/before-load.archive.gz"
start_load restore
swarm_sh restore "$E2E_DIR/before-load.archive.gz" | tee "$E2E_DIR/restore.log"
stop_load
replaced_from=$(sed -n 's/^ *\([0-9T:.-]*Z\) (3) mongorestore started$/\1/p' "$E2E_DIR/restore.log")
[ -n "$replaced_from" ] || fail "the restore did not say when mongorestore began"
check_load restore --replaced-from "$replaced_from"

say "lab: a new application password under load"
start_load rotation
openssl rand -hex 24 | tr -d '\n' >"$SECRETS_DIR/mongo_app_password"
swarm_sh deploy
stop_load
check_load rotation

say "lab: an API key added, then revoked, under load"
start_load keys
# The new key is the output's last line: kept in a file of this run (mode 600), not shown.
swarm_sh api-key e2e-client read >"$E2E_DIR/api-key.log"
head -n -1 "$E2E_DIR/api-key.log"
(umask 077 && tail -n 1 "$E2E_DIR/api-key.log" >"$E2E_DIR/e2e-client.key")
rm -f "$E2E_DIR/api-key.log"
grep -Eq '^usersapi_[A-Za-z0-9_-]{43}$' "$E2E_DIR/e2e-client.key" || fail "api-key did not end with the new key alone on its line"
added=$(status_with "$E2E_DIR/e2e-client.key")
[ "$added" = 200 ] || fail "the new key got $added, not 200"
echo "PASS  the new key e2e-client reads through the ingress: GET /users -> $added"
swarm_sh api-key --revoke e2e-client
revoked=$(status_with "$E2E_DIR/e2e-client.key")
[ "$revoked" = 401 ] || fail "the revoked key got $revoked, not 401"
echo "PASS  the revoked key e2e-client gets GET /users -> $revoked through the ingress"
rm -f "$E2E_DIR/e2e-client.key"
stop_load
check_load keys

say "lab: a certificate of its own replaces the self-signed one, under load"
own_certificate "$E2E_DIR/lab-certificate"
start_load certificate
TLS_CERT_FILE="$E2E_DIR/lab-certificate/fullchain.pem" TLS_KEY_FILE="$E2E_DIR/lab-certificate/privkey.pem" swarm_sh deploy
stop_load
check_load certificate --outage
python3 stack/api_checks.py certificate "$HTTPS_URL" --cert-file "$E2E_DIR/lab-certificate/fullchain.pem" \
  --kind "the certificate deployed under load" | tee "$E2E_DIR/certificate.log"
grep -q '^PASS' "$E2E_DIR/certificate.log" || fail "the ingress does not serve the new certificate"

say "lab: down (backs the users up first)"
swarm_sh down | tee "$E2E_DIR/down.log"
kept=$(sed -n 's/^ *the users are in \(.*\): after .*/\1/p' "$E2E_DIR/down.log")
if [ -z "$kept" ] || ! gzip -t "$kept"; then fail "down did not leave a backup of the users"; fi
echo "PASS  down kept the users in $kept"

# --- 2. a swarm made without swarm.sh -----------------------------------------------------------
say "own swarm: three nodes joined by hand, reached through the context $OWN_CONTEXT"
for port in "$OWN_HTTP_PORT" "$OWN_HTTPS_PORT"; do
  ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || fail "host port $port is in use (E2E_OWN_HTTP_PORT, E2E_OWN_HTTPS_PORT)"
done
read -r -a dind_opts <<<"$DIND_RUN_OPTS"
docker network create "$OWN_NETWORK" >/dev/null
docker run -d "${dind_opts[@]}" --name "${OWN_NODES[0]}" --hostname "${OWN_NODES[0]}" \
  --network "$OWN_NETWORK" -e DOCKER_TLS_CERTDIR= "$DIND_IMAGE" >/dev/null
docker run -d "${dind_opts[@]}" --name "${OWN_NODES[1]}" --hostname "${OWN_NODES[1]}" \
  --network "$OWN_NETWORK" "$DIND_IMAGE" >/dev/null
docker run -d "${dind_opts[@]}" --name "${OWN_NODES[2]}" --hostname "${OWN_NODES[2]}" \
  --network "$OWN_NETWORK" -p "$OWN_HTTP_PORT:$OWN_HTTP_PORT" -p "$OWN_HTTPS_PORT:$OWN_HTTPS_PORT" "$DIND_IMAGE" >/dev/null
for node in "${OWN_NODES[@]}"; do
  for _ in $(seq 90); do docker exec "$node" docker info >/dev/null 2>&1 && break; sleep 1; done
done
manager_ip=$(docker inspect -f "{{(index .NetworkSettings.Networks \"$OWN_NETWORK\").IPAddress}}" "${OWN_NODES[0]}")
docker exec "${OWN_NODES[0]}" docker swarm init --advertise-addr "$manager_ip" >/dev/null
token=$(docker exec "${OWN_NODES[0]}" docker swarm join-token -q worker)
for node in "${OWN_NODES[1]}" "${OWN_NODES[2]}"; do
  docker exec "$node" docker swarm join --token "$token" "$manager_ip:2377" >/dev/null
done
docker context create "$OWN_CONTEXT" --docker "host=tcp://$manager_ip:2375" >/dev/null
docker --context "$OWN_CONTEXT" node ls

real_docker=$(command -v docker)  # found before the recorder is first on PATH
mkdir -p "$E2E_DIR/bin"
ln -sf "$PWD/e2e/record_docker.py" "$E2E_DIR/bin/docker"
own_swarm() {
  PATH="$E2E_DIR/bin:$PATH" REAL_DOCKER=$real_docker DOCKER_RECORD="$E2E_DIR/own-docker-calls.jsonl" \
    SWARM_CONTEXT="$OWN_CONTEXT" STACK_NAME="$OWN_PREFIX" DATABASE_NODE="${OWN_NODES[1]}" \
    INGRESS_NODE="${OWN_NODES[2]}" API_NODE="${OWN_NODES[0]}" HTTP_PORT="$OWN_HTTP_PORT" \
    HTTPS_PORT="$OWN_HTTPS_PORT" SECRETS_DIR="$E2E_DIR/own-secrets" BACKUP_DIR="$E2E_DIR/own-backups" \
    TLS_CERT_FILE="$E2E_DIR/own-certificate/fullchain.pem" TLS_KEY_FILE="$E2E_DIR/own-certificate/privkey.pem" \
    bash stack/swarm.sh "$@"
}
own_certificate "$E2E_DIR/own-certificate"
say "own swarm: stack/swarm.sh labels secrets deploy verify drill (SWARM_CONTEXT=$OWN_CONTEXT)"
own_swarm labels secrets deploy verify drill
say "own swarm: down"
own_swarm down
left=$(docker --context "$OWN_CONTEXT" service ls -q --filter "label=com.docker.stack.namespace=$OWN_PREFIX")
[ -z "$left" ] || fail "down left services of $OWN_PREFIX behind"
for node in "${OWN_NODES[@]}"; do
  [ "$(docker inspect -f '{{.State.Running}}' "$node")" = true ] || fail "node $node no longer runs"
done
ready=$(docker --context "$OWN_CONTEXT" node ls --format '{{.Status}}' | grep -c '^Ready$')
[ "$ready" = 3 ] || fail "the swarm has $ready ready nodes after down, not 3"
echo "PASS  down removed the stack $OWN_PREFIX and left the three nodes running and Ready"
python3 e2e/record_docker.py check "$E2E_DIR/own-docker-calls.jsonl" --context "$OWN_CONTEXT" \
  --node "${OWN_NODES[0]}" --node "${OWN_NODES[1]}" --node "${OWN_NODES[2]}"

say "both deployments passed"
