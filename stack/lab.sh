# shellcheck shell=bash
# The lab steps of stack/swarm.sh, which sources this file: a swarm of three docker-in-docker
# nodes on this machine (nodes, swarm) and its removal (lab_remove). Only these steps touch
# the node containers; every later step reaches the lab's manager through the Docker context
# the nodes step makes, exactly as it reaches a swarm of your own.
#
# Uses swarm.sh's settings (NODE_PREFIX, NODE_NETWORK, LAB_MANAGER, LAB_WORKER1, LAB_WORKER2,
# INGRESS_NODE, DIND_IMAGE, DIND_RUN_OPTS, HTTP_PORT, HTTPS_PORT, STACK_NAME,
# ENDPOINT_CONTEXT) and helpers (step, info, die, run, show_cmd, quietly); sets no globals.
#
# The lab's endpoint: the manager runs docker:27-dind with DOCKER_TLS_CERTDIR='', and the
# image's entrypoint (dockerd-entrypoint.sh) then starts
#   dockerd --host=unix:///var/run/docker.sock --host=tcp://0.0.0.0:2375
# an engine API without TLS or authentication on port 2375 (Docker 27 logs a deprecation
# warning for it and delays its start by about 15 s; the lab's stand-in starts at once). The
# context points at the manager's address on the bridge network NODE_NETWORK, which only this
# machine and the three nodes reach: no port is published, so the API is no more exposed than
# the host's own Docker socket. That is acceptable for a throwaway lab on one machine and for
# nothing else: a real swarm's context uses ssh://user@manager or tcp:// with TLS certificates.

NODE_LABEL=usersapi.swarm.stack  # on the node containers and network, so `down` finds them

lab_nodes() { printf '%s\n' "$LAB_MANAGER" "$LAB_WORKER1" "$LAB_WORKER2"; }

node_state() {  # running | stopped | missing
  local running
  running=$(docker inspect -f '{{.State.Running}}' "$1" 2>/dev/null) || { echo missing; return; }
  [ "$running" = true ] && echo running || echo stopped
}

require_node() {
  [ "$(node_state "$1")" = running ] || die "node $1 is not running: run '$0 nodes' first"
}

node_swarm_state() {  # inactive | active | pending | error | locked
  docker exec "$1" docker info -f '{{.Swarm.LocalNodeState}}' 2>/dev/null || echo unknown
}

node_ip() {
  docker inspect -f "{{(index .NetworkSettings.Networks \"$NODE_NETWORK\").IPAddress}}" "$1"
}

wait_for_engine() {
  local node=$1 i
  for ((i = 0; i < 90; i++)); do
    quietly docker exec "$node" docker info && return 0
    sleep 1
  done
  die "the Docker engine in $node did not start within 90 s (docker logs $node)"
}

port_in_use() {  # something already accepts connections on this host port
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# The ingress node publishes the ports it was created with: nginx on other ports would be out
# of reach. Changing them means new nodes.
require_ingress_ports() {
  local published port missing=()
  published=$(docker port "$INGRESS_NODE" 2>/dev/null || true)
  for port in "$HTTP_PORT" "$HTTPS_PORT"; do
    grep -Eq "^$port/tcp -> .*:$port\$" <<<"$published" || missing+=("$port")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  local have
  have=$(sed -n 's|^\([0-9]*\)/tcp -> .*|\1|p' <<<"$published" | sort -un | xargs)
  die "$INGRESS_NODE publishes host ports [${have:-none}], not ${missing[*]} (HTTP_PORT=$HTTP_PORT HTTPS_PORT=$HTTPS_PORT): run with the ports it publishes, or '$0 down' first and then '$0 all' with the new ports"
}

# A manager made before the lab had an endpoint serves only its unix socket.
require_plain_tcp_manager() {
  docker inspect -f '{{range .Config.Env}}{{println .}}{{end}}' "$LAB_MANAGER" | grep -qx 'DOCKER_TLS_CERTDIR=' ||
    die "$LAB_MANAGER was made without an endpoint for this machine (DOCKER_TLS_CERTDIR=''): '$0 down' then '$0 all' makes it again"
}

# The context every later step uses: the manager's engine on the node network.
lab_context() {
  local host
  host=tcp://$(node_ip "$LAB_MANAGER"):2375
  if quietly docker context inspect "$ENDPOINT_CONTEXT"; then
    show_cmd docker context update --docker "host=$host" "$ENDPOINT_CONTEXT"
    docker context update --description "lab swarm $STACK_NAME (stack/swarm.sh)" \
      --docker "host=$host" "$ENDPOINT_CONTEXT" >/dev/null
  else
    show_cmd docker context create --docker "host=$host" "$ENDPOINT_CONTEXT"
    docker context create --description "lab swarm $STACK_NAME (stack/swarm.sh)" \
      --docker "host=$host" "$ENDPOINT_CONTEXT" >/dev/null
  fi
  info "context $ENDPOINT_CONTEXT -> $host (plain tcp on the private node network: a lab endpoint only)"
}

cmd_nodes() {
  step "nodes: a manager and two workers as docker-in-docker containers ($DIND_IMAGE)"
  lab_nodes | grep -qx "$INGRESS_NODE" ||
    die "INGRESS_NODE=$INGRESS_NODE is not a lab node ($(lab_nodes | xargs)): the lab publishes the ports on one of its own"
  local dind_opts node state port
  read -r -a dind_opts <<<"$DIND_RUN_OPTS"
  if [ "$(node_state "$INGRESS_NODE")" = missing ]; then
    for port in "$HTTP_PORT" "$HTTPS_PORT"; do
      ! port_in_use "$port" || die "host port $port is in use: choose free ports with HTTP_PORT and HTTPS_PORT"
    done
  fi
  if quietly docker network inspect "$NODE_NETWORK"; then
    info "network $NODE_NETWORK exists, reusing it"
  else
    run docker network create --label "$NODE_LABEL=$STACK_NAME" "$NODE_NETWORK"
  fi
  while read -r node; do
    state=$(node_state "$node")
    case $state in
      running) info "node $node is already running, reusing it" ;;
      stopped) run docker start "$node" ;;
      missing)
        local opts=()
        # The ingress node: the stack publishes these ports on it (mode: host).
        [ "$node" != "$INGRESS_NODE" ] || opts+=(-p "$HTTP_PORT:$HTTP_PORT" -p "$HTTPS_PORT:$HTTPS_PORT")
        # The manager: the engine API on plain tcp 2375 for the lab's context (see the top).
        [ "$node" != "$LAB_MANAGER" ] || opts+=(-e DOCKER_TLS_CERTDIR=)
        run docker run -d "${dind_opts[@]}" --name "$node" --hostname "$node" \
          --network "$NODE_NETWORK" --label "$NODE_LABEL=$STACK_NAME" "${opts[@]}" "$DIND_IMAGE"
        ;;
    esac
  done < <(lab_nodes)
  require_ingress_ports
  require_plain_tcp_manager
  info "waiting for the Docker engine inside each node"
  while read -r node; do wait_for_engine "$node"; done < <(lab_nodes)
  lab_context
  run docker ps --filter "label=$NODE_LABEL=$STACK_NAME" \
    --format 'table {{.Names}}\t{{.Image}}\t{{.Status}}\t{{.Ports}}'
}

cmd_swarm() {
  step "swarm: init on $LAB_MANAGER, join $LAB_WORKER1 and $LAB_WORKER2 as workers"
  local node ip token id
  while read -r node; do require_node "$node"; done < <(lab_nodes)
  ip=$(node_ip "$LAB_MANAGER")
  if [ "$(node_swarm_state "$LAB_MANAGER")" = active ]; then
    info "$LAB_MANAGER is already a swarm manager"
  else
    # Only docker's first line ("Swarm initialized: ..."): the rest prints the join token,
    # a credential.
    show_cmd docker exec "$LAB_MANAGER" docker swarm init --advertise-addr "$ip"
    docker exec "$LAB_MANAGER" docker swarm init --advertise-addr "$ip" | sed -n 1p
  fi
  token=$(docker exec "$LAB_MANAGER" docker swarm join-token -q worker)
  for node in "$LAB_WORKER1" "$LAB_WORKER2"; do
    if [ "$(node_swarm_state "$node")" = active ]; then
      id=$(docker exec "$node" docker info -f '{{.Swarm.NodeID}}')
      if docker exec "$LAB_MANAGER" docker node ls -q | grep -qx "$id"; then
        info "$node is already a member of this swarm"
        continue
      fi
      info "$node belongs to another swarm (the manager was recreated): leaving it"
      run docker exec "$node" docker swarm leave --force
    fi
    show_cmd docker exec "$node" docker swarm join --token '<worker-token>' "$ip:2377"
    docker exec "$node" docker swarm join --token "$token" "$ip:2377"
  done
  # Nodes recreated under the same name leave "Down" entries behind; drop them so names
  # stay unambiguous for the labels step.
  local stale
  stale=$(docker exec "$LAB_MANAGER" docker node ls --format '{{.ID}} {{.Status}}' | awk '$2 == "Down" {print $1}')
  for id in $stale; do run docker exec "$LAB_MANAGER" docker node rm --force "$id"; done
  run docker exec "$LAB_MANAGER" docker node ls
}

# The lab's nodes (with their volumes: images, swarm state, MongoDB data), network and context.
lab_remove() {
  local node existing=()
  while read -r node; do
    [ "$(node_state "$node")" = missing ] || existing+=("$node")
  done < <(lab_nodes)
  if [ "${#existing[@]}" -gt 0 ]; then
    run docker rm -f -v "${existing[@]}"
  else
    info "no lab nodes to remove"
  fi
  if quietly docker network inspect "$NODE_NETWORK"; then
    run docker network rm "$NODE_NETWORK"
  else
    info "network $NODE_NETWORK already gone"
  fi
  if quietly docker context inspect "$ENDPOINT_CONTEXT"; then
    show_cmd docker context rm -f "$ENDPOINT_CONTEXT"
    docker context rm -f "$ENDPOINT_CONTEXT" >/dev/null
  fi
}
