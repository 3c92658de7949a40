# shellcheck shell=bash
# Short-lived tasks, for stack/swarm.sh, which sources this file. What must run next to the
# database or inside the stack's networks (setting MongoDB users, mongodump and mongorestore,
# the restore lock, verify's checks from the api's and the ingress's network position) runs as
# a service created for the purpose: one task, placed on the manager this script talks to
# (node.id), attached to the networks and given the secrets it needs, removed when the script
# ends. The script talks to it with `docker exec` through the same endpoint: stdin and stdout
# stream both ways, so Python scripts go in on stdin and archives flow through it; nothing is
# copied to, or left on, a node. A task that outlives a killed script stops by itself after
# WAIT_TIMEOUT + 1 hour, and `down` removes any left behind.
#
# Uses swarm.sh's settings (STACK_NAME, STACK_DIR, WAIT_TIMEOUT, ENDPOINT_CONTEXT,
# MANAGER_NODE_ID) and helpers (sw, sw_for, show_sw, run_sw_quiet, info, die, defer,
# require_swarm, state_py); sets no globals but the variable each task_start call names.

TASK_LABEL=usersapi.task  # value: the stack's name
# A task's logs are rotated as the stack's services' are (docker-stack.yml, x-logging).
TASK_LOG_OPTIONS=(--log-driver json-file --log-opt max-size=10m --log-opt max-file=3)

# The manager must take tasks: a drained manager (availability drain) runs none.
require_manager_takes_tasks() {
  local out availability hostname
  out=$(sw node inspect self --format '{{.Spec.Availability}} {{.Description.Hostname}}') ||
    die "cannot read the manager's node (context $ENDPOINT_CONTEXT)"
  read -r availability hostname <<<"$out"
  [ "$availability" = active ] || die "the manager $hostname (context $ENDPOINT_CONTEXT) has availability '$availability': it runs no tasks, and this step runs short-lived tasks on the manager it reaches (docker node update --availability active $hostname), or point SWARM_CONTEXT at a manager that takes tasks"
}

# task_start VAR KIND IMAGE [docker service create options...]: a one-task service named
# <stack>-KIND-<random> on this manager, running IMAGE's `sleep`; waits (WAIT_TIMEOUT at most)
# until the task runs, sets VAR to its container's id and removes the service at the end. VAR
# must not be one of this function's own names (var kind image name start out state container
# err).
task_start() {
  local var=$1 kind=$2 image=$3
  shift 3
  require_swarm
  require_manager_takes_tasks
  local name
  name=$STACK_NAME-$kind-$(od -An -N4 -tx4 /dev/urandom | tr -d ' \n')
  show_sw service create --name "$name" "$@" "${image%@*}" sleep '<lifetime>'
  sw service create --detach --quiet --name "$name" --label "$TASK_LABEL=$STACK_NAME" \
    --constraint "node.id==$MANAGER_NODE_ID" --restart-condition none --no-healthcheck --with-registry-auth \
    "${TASK_LOG_OPTIONS[@]}" "$@" "$image" sleep "$((WAIT_TIMEOUT + 3600))" >/dev/null ||
    die "could not create the task $name"
  defer task_remove "$name"
  local start=$SECONDS out state container err
  while true; do
    out=$(sw service ps -q --no-trunc "$name" | head -n 1)
    if [ -n "$out" ]; then
      out=$(sw inspect --type task --format \
        '{{.Status.State}}|{{with .Status.ContainerStatus}}{{.ContainerID}}{{end}}|{{.Status.Err}}' "$out")
      IFS='|' read -r state container err <<<"$out"
      case $state in
        running) break ;;
        failed | rejected | complete | shutdown | orphaned)
          die "task $name $state before it ran: ${err:-no error given} (docker --context $ENDPOINT_CONTEXT service ps --no-trunc $name)" ;;
      esac
    fi
    ((SECONDS - start < WAIT_TIMEOUT)) ||
      die "task $name did not start within $WAIT_TIMEOUT s (${state:-no task}: ${err:-no error given})"
    sleep 1
  done
  info "task $name runs (container ${container:0:12} on this manager)"
  printf -v "$var" '%s' "$container"
}

task_remove() {
  sw service rm "$1" >/dev/null 2>&1 || info "could not remove the task $1: docker --context $ENDPOINT_CONTEXT service rm $1"
}

# Tasks left behind by a script that was killed (down removes them).
remove_stale_tasks() {
  local names=()
  mapfile -t names < <(sw service ls -q --filter "label=$TASK_LABEL=$STACK_NAME" || true)
  [ "${#names[@]}" -eq 0 ] || run_sw_quiet service rm "${names[@]}"
}

# task_exec SECONDS CID CMD...: CMD in the task's container, stdin and stdout streamed.
task_exec() {
  local seconds=$1 cid=$2
  shift 2
  sw_for "$seconds" exec -i "$cid" "$@"
}

# task_python SECONDS CID SCRIPT ARGS...: stack/SCRIPT run by the task's Python, fed on stdin.
task_python() {
  local seconds=$1 cid=$2 script=$3
  shift 3
  task_exec "$seconds" "$cid" python - "$@" <"$STACK_DIR/$script"
}

# secret_mount SECRET TARGET [UID]: the --secret option that mounts SECRET as TARGET,
# readable by UID only (default the api image's 10001).
secret_mount() {
  printf -- '--secret=source=%s,target=%s,uid=%s,gid=%s,mode=0400' "$1" "$2" "${3:-10001}" "${3:-10001}"
}

# secret_option SERVICE_JSON TARGET [UID]: the --secret option that mounts, as TARGET, the
# secret the service mounts as TARGET.
secret_option() {
  local name
  name=$(state_py secret-name "$1" "$2") || die "the service in $1 mounts no secret $2"
  secret_mount "$name" "$2" "${3:-10001}"
}
