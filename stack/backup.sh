# shellcheck shell=bash
# The backup, restore and drill steps of stack/swarm.sh, which sources this file.
#
# The MongoDB Database Tools run in a short-lived task of the stack's mongo image on its back
# network, logged in as the backup user (MONGO_BACKUP_USER, MongoDB's built-in roles backup
# and restore): its password reaches them as a --config file mounted from a secret, never a
# command line, and every argument goes to `docker exec` as one word, never through a shell.
# The archive streams through `docker exec` between this machine and the task. A restore
# holds the restore lock (CONTRACTS.md) while it replaces the users: the API answers 503 with
# Retry-After meanwhile, so no write it acknowledges is lost.
#
# Uses swarm.sh's settings (STACK_NAME, MONGO_DB, MONGO_BACKUP_USER, MONGO_ROOT_USER,
# BACKUP_DIR, RESTORE_LOCK_SECONDS, WAIT_TIMEOUT, ENDPOINT_CONTEXT) and helpers (step, info,
# die, tally, show_sw, sw, defer, require_stack, make_workdir, service_json, state_py),
# tasks.sh's (task_start, task_exec, task_python, task_remove, secret_option,
# TASK_LOG_OPTIONS) and keys.sh's keys_py; resets swarm.sh's CHECKS and FAILED in the drill.

TOOLS_CONFIG=/run/secrets/backup_config
DRILL_PORT=8000

now_utc() { date -u +%Y-%m-%dT%H:%M:%S.%3NZ; }

tool_auth() {  # the Database Tools' server and login options
  printf '%s\n' --host=mongo --port=27017 "--config=$TOOLS_CONFIG" "--username=$MONGO_BACKUP_USER" \
    --authenticationDatabase=admin
}

backup_secret() {  # the secret deploy made with the backup user's --config file
  local name
  name=$(sw secret ls --filter "label=com.docker.stack.namespace=$STACK_NAME" \
    --filter label=usersapi.secret=mongo_backup --format '{{.Name}}' | head -n 1)
  [ -n "$name" ] || die "no backup credentials on this swarm (secret ${STACK_NAME}_mongo_backup_*): '$0 deploy' makes them"
  printf '%s' "$name"
}

# tools_task VAR WORKDIR: a task of the mongo service's image, as the image's mongodb user (the
# service's spec read into WORKDIR/mongo.json unless the step read it already).
tools_task() {
  [ -s "$2/mongo.json" ] || service_json mongo "$2/mongo.json" || die "cannot read the mongo service"
  task_start "$1" tools "$(state_py image --digest "$2/mongo.json")" --network "${STACK_NAME}_back" \
    --user 999:999 "$(secret_mount "$(backup_secret)" backup_config 999)"
}

# lock_task VAR WORKDIR: a task of the api's image that holds the backup user's credentials,
# for the restore lock (stack/mongo_tasks.py).
lock_task() {
  service_json api "$2/api.json" || die "cannot read the api service"
  task_start "$1" lock "$(state_py image --digest "$2/api.json")" --network "${STACK_NAME}_back" \
    "$(secret_mount "$(backup_secret)" backup_config)"
}

# A backup file lands where git does not see it: BACKUP_DIR gets a .gitignore of its own, and
# a file named by hand inside the repository must be one git ignores already.
prepare_backup_dir() {
  if [ ! -d "$BACKUP_DIR" ]; then
    mkdir -p "$(dirname "$BACKUP_DIR")"
    mkdir -m 700 "$BACKUP_DIR" || die "cannot create $BACKUP_DIR"
    info "created $BACKUP_DIR (mode 700)"
  fi
  [ -e "$BACKUP_DIR/.gitignore" ] || printf '# Backups hold personal data: never in git.\n*\n' >"$BACKUP_DIR/.gitignore"
}

refuse_tracked_place() {
  local dir=$1 top
  while [ ! -d "$dir" ]; do dir=$(dirname "$dir"); done
  top=$(git -C "$dir" rev-parse --show-toplevel 2>/dev/null) || return 0
  git -C "$dir" check-ignore -q "$2" 2>/dev/null ||
    die "$2 is inside the git work tree $top and git does not ignore it: a backup holds personal data; give a path in BACKUP_DIR ($BACKUP_DIR) or outside the tree (nothing written)"
}

# dump_to CID DB FILE: mongodump of DB.users through the tools task into FILE, which must not
# exist: written under another name first, then linked to FILE (a link never replaces a file).
dump_to() {
  local cid=$1 db=$2 file=$3 tmp auth=()
  mapfile -t auth < <(tool_auth)
  tmp=$(mktemp "$(dirname "$file")/.partial-XXXXXX")  # mode 600 from its first byte
  defer rm -f "$tmp" "$tmp.log"
  show_sw exec -i '<tools task>' mongodump "${auth[@]}" "--db=$db" --collection=users --archive --gzip '>' "$file"
  if ! task_exec "$WAIT_TIMEOUT" "$cid" mongodump "${auth[@]}" "--db=$db" --collection=users \
    --archive --gzip >"$tmp" 2>"$tmp.log"; then
    die "mongodump failed, no backup written: $(grep -v '^[0-9T:.+-]*[[:space:]]*writing\|done dumping' "$tmp.log" | tail -n 1)"
  fi
  gzip -t "$tmp" 2>/dev/null || die "mongodump wrote no complete gzip archive: no backup written"
  ln "$tmp" "$file" 2>/dev/null || die "$file appeared meanwhile: it was not overwritten, and this dump is discarded"
  info "wrote $file ($(wc -c <"$file") bytes, mode $(stat -c %a "$file")): $(grep -o 'done dumping.*' "$tmp.log" | tail -n 1)"
}

cmd_backup() {
  local file=${1:-} in_backup_dir=""
  if [ -z "$file" ]; then
    file=$BACKUP_DIR/$STACK_NAME-$(date -u +%Y%m%dT%H%M%SZ).archive.gz
  fi
  [[ $file == "$BACKUP_DIR"/* ]] && in_backup_dir=1
  step "backup: mongodump of $MONGO_DB.users in stack $STACK_NAME to $file"
  [ ! -e "$file" ] || die "$file exists: a backup never overwrites a file; give another name"
  if [ -n "$in_backup_dir" ]; then prepare_backup_dir; else refuse_tracked_place "$(dirname "$file")" "$file"; fi
  require_stack
  local work cid
  make_workdir work
  mkdir -p "$(dirname "$file")"
  tools_task cid "$work"
  dump_to "$cid" "$MONGO_DB" "$file"
}

# check_archive FILE: refuses, before anything changes, a file that is missing, empty, not
# gzip, truncated or corrupt.
check_archive() {
  local file=$1
  [ -e "$file" ] || die "$file: no such file"
  [ -f "$file" ] || die "$file: not a regular file"
  [ -r "$file" ] || die "$file: not readable"
  [ -s "$file" ] || die "$file: empty file, not a backup"
  gzip -t "$file" 2>/dev/null || die "$file: not a complete gzip file (truncated or corrupt): nothing restored"
  info "gzip -t $file: intact"
}

# dry_run CID DB FILE: mongorestore --dryRun reads the whole archive and writes nothing; it
# must find DB.users in it.
dry_run() {
  local cid=$1 db=$2 file=$3 out auth=()
  mapfile -t auth < <(tool_auth)
  show_sw exec -i '<tools task>' mongorestore "${auth[@]}" "--nsInclude=$db.users" --archive --gzip --dryRun '<' "$file"
  out=$(task_exec "$WAIT_TIMEOUT" "$cid" mongorestore "${auth[@]}" "--nsInclude=$db.users" \
    --archive --gzip --dryRun <"$file" 2>&1) ||
    die "$file: mongorestore --dryRun refused it: $({ grep -m1 'Failed' <<<"$out" || tail -n 1 <<<"$out"; } |
      sed 's/^[0-9T:.+-]*[[:space:]]*//'): nothing restored"
  grep -qF "reading metadata for $db.users " <<<"$out" ||
    die "$file: holds no $db.users collection (a backup of another database?): nothing restored"
  info "mongorestore --dryRun: a complete archive of $db.users"
}

# restore_locked LOCK_CID TOOLS_CID DB FILE OP_TIMEOUT_MS [CMD...]: the restore lock's protocol
# (CONTRACTS.md). CMD, if given, runs while the lock holds, before the users are replaced.
restore_locked() {
  local lock_cid=$1 tools_cid=$2 db=$3 file=$4 op_ms=$5 auth=() out
  shift 5
  mapfile -t auth < <(tool_auth)
  local lock_args=(--user "$MONGO_BACKUP_USER" --config "$TOOLS_CONFIG" --db "$db")
  out=$(task_python 60 "$lock_cid" mongo_tasks.py lock "${lock_args[@]}" --seconds "$RESTORE_LOCK_SECONDS" 2>&1) ||
    die "could not take the restore lock, nothing restored: $(tail -n 1 <<<"$out")"
  info "$(now_utc) (1) $out"
  # Within 1 s every api worker sees the lock; a request that started before it is done
  # within MONGO_OP_TIMEOUT_MS; then nothing but this restore touches the users.
  local wait=$((1 + (op_ms + 999) / 1000 + 1))
  info "(2) the API answers 503 with Retry-After to /users now; waiting $wait s (1 s + MONGO_OP_TIMEOUT_MS $op_ms ms + 1 s) for the requests under way"
  sleep "$wait"
  [ $# -eq 0 ] || "$@"
  info "$(now_utc) (3) mongorestore started"
  show_sw exec -i '<tools task>' mongorestore "${auth[@]}" "--nsInclude=$db.users" --drop --archive --gzip '<' "$file"
  out=$(task_exec "$WAIT_TIMEOUT" "$tools_cid" mongorestore "${auth[@]}" "--nsInclude=$db.users" \
    --drop --archive --gzip <"$file" 2>&1) ||
    die "mongorestore failed: $(tail -n 1 <<<"$out"); the lock stays (the collection may be incomplete), /users answers 503 until a restore succeeds or the lock expires in $RESTORE_LOCK_SECONDS s"
  info "    $(grep -o 'finished restoring.*' <<<"$out" | tail -n 1)"
  out=$(task_python 60 "$lock_cid" mongo_tasks.py index "${lock_args[@]}" 2>&1) ||
    die "could not create the unique email index: $(tail -n 1 <<<"$out"); the lock stays until it expires in $RESTORE_LOCK_SECONDS s: restore again"
  info "(4) $out"
  out=$(task_python 60 "$lock_cid" mongo_tasks.py unlock "${lock_args[@]}" 2>&1) ||
    die "the users are restored but the lock could not be dropped: $(tail -n 1 <<<"$out"); it expires in $RESTORE_LOCK_SECONDS s"
  info "$(now_utc) (5) $out: the API serves the restored users"
}

cmd_restore() {
  local file=${1:-}
  [ -n "$file" ] || die "restore needs the archive: restore FILE"
  step "restore: $MONGO_DB.users of stack $STACK_NAME from $file (checked first)"
  check_archive "$file"
  require_stack
  local work tools_cid lock_cid
  make_workdir work
  tools_task tools_cid "$work"
  dry_run "$tools_cid" "$MONGO_DB" "$file"
  lock_task lock_cid "$work"
  restore_locked "$lock_cid" "$tools_cid" "$MONGO_DB" "$file" \
    "$(state_py env "$work/api.json" MONGO_OP_TIMEOUT_MS 2>/dev/null || echo 5000)"
  info "restored $MONGO_DB.users from $file; the API kept running"
}

# --- drill ------------------------------------------------------------------------------------
remove_secret() {  # once no task holds it any more (30 s at most)
  local start=$SECONDS
  until sw secret rm "$1" >/dev/null 2>&1; do
    ((SECONDS - start < 30)) || { info "could not remove the secret $1: docker --context $ENDPOINT_CONTEXT secret rm $1"; return 0; }
    sleep 2
  done
}

# The drill proves backup and restore on data of its own: a database and a MongoDB user of its
# own, served by a temporary api service of the stack's image, all removed afterwards. The
# users' data is never touched.
cmd_drill() {
  step "drill: back up a database of its own, change it, restore it under the lock, and find exactly what was backed up"
  require_stack
  CHECKS=0
  FAILED=0
  tally drill_round_trip
  printf '\ndrill: %d checks, %d failed\n' "$CHECKS" "$FAILED"
  [ "$FAILED" -eq 0 ]
}

drill_round_trip() {
  local work tag db user secret image api_name runner_cid tools_cid
  make_workdir work
  tag=$(od -An -N4 -tx4 /dev/urandom | tr -d ' \n')
  db=${MONGO_DB}_drill_$tag
  user=drill_$tag
  secret=${STACK_NAME}_drill_$tag
  service_json api "$work/api.json" || die "cannot read the api service"
  service_json mongo "$work/mongo.json" || die "cannot read the mongo service"
  image=$(state_py image --digest "$work/api.json")
  local op_ms
  op_ms=$(state_py env "$work/api.json" MONGO_OP_TIMEOUT_MS 2>/dev/null || echo 5000)

  # Its MongoDB user, with a password that exists only as a swarm secret; and its API key,
  # which only its client holds (a secret), its API the key's line.
  openssl rand -hex 24 | tr -d '\n' | sw secret create --label "$TASK_LABEL=$STACK_NAME" "$secret" - >/dev/null ||
    die "could not create the drill's secret"
  defer remove_secret "$secret"
  local key_line
  key_line=$(keys_py new drill write) || die "could not make the drill's API key"
  sed -n 2p <<<"$key_line" | tr -d '\n' | sw secret create --label "$TASK_LABEL=$STACK_NAME" "$secret-key" - >/dev/null ||
    die "could not create the drill's key secret"
  defer remove_secret "$secret-key"
  key_line=$(sed -n 1p <<<"$key_line")
  local admin_cid
  task_start admin_cid drill-admin "$image" --network "${STACK_NAME}_back" \
    "$(secret_option "$work/mongo.json" mongo_root_password)" \
    "$(secret_mount "$secret" drill_password)"
  defer task_python 120 "$admin_cid" mongo_tasks.py users --root-user "$MONGO_ROOT_USER" \
    --root-password-file /run/secrets/mongo_root_password --drop "$db" "$user" --drop-database "$db"
  task_python 120 "$admin_cid" mongo_tasks.py users --root-user "$MONGO_ROOT_USER" \
    --root-password-file /run/secrets/mongo_root_password --app "$db" "$user" /run/secrets/drill_password |
    sed 's/^/    /'

  # Its API: the stack's image, its database and user.
  local env=(--env MONGO_HOST=mongo --env MONGO_PORT=27017 --env "MONGO_DB=$db" --env "MONGO_USER=$user"
    --env "MONGO_AUTH_SOURCE=$db" --env MONGO_PASSWORD_FILE=/run/secrets/drill_password
    --env "MONGO_OP_TIMEOUT_MS=$op_ms" --env LOG_FORMAT=json)
  api_name=$STACK_NAME-drill-api-$tag
  show_sw service create --name "$api_name" --network "${STACK_NAME}_back" "${env[@]}" --env "API_KEYS=$key_line" "${image%@*}"
  sw service create --detach --quiet --name "$api_name" --label "$TASK_LABEL=$STACK_NAME" \
    --network "${STACK_NAME}_back" --endpoint-mode dnsrr --restart-condition none --with-registry-auth \
    --read-only --cap-drop ALL "${TASK_LOG_OPTIONS[@]}" \
    "$(secret_mount "$secret" drill_password)" \
    "${env[@]}" --env "API_KEYS=$key_line" "$image" >/dev/null || die "could not create the drill's API service"
  defer task_remove "$api_name"
  local base=http://$api_name:$DRILL_PORT

  # Its client, with the same settings (for a write straight into MongoDB) and the backup
  # user's credentials (for the restore lock).
  task_start runner_cid drill "$image" --network "${STACK_NAME}_back" "${env[@]}" \
    "$(secret_mount "$secret" drill_password)" \
    "$(secret_mount "$secret-key" drill_key)" \
    "$(secret_mount "$(backup_secret)" backup_config)"
  tools_task tools_cid "$work"
  local state=/tmp/drill-state.json client=(api_checks.py --key-file /run/secrets/drill_key)
  task_python 180 "$runner_cid" "${client[@]}" drill-seed "$base" "$state"

  local archive=$work/drill.archive.gz
  dump_to "$tools_cid" "$db" "$archive"
  if [ "$(stat -c %a "$archive")" = 600 ] && gzip -t "$archive"; then
    printf 'PASS  drill: backup of %s.users written through the tools task, mode 600, gzip intact\n' "$db"
  else
    printf 'FAIL  drill: backup file mode %s or not intact\n' "$(stat -c %a "$archive")"
  fi
  task_python 60 "$runner_cid" "${client[@]}" drill-change "$base" "$state"
  dry_run "$tools_cid" "$db" "$archive"
  restore_locked "$runner_cid" "$tools_cid" "$db" "$archive" "$op_ms" \
    task_python 60 "$runner_cid" "${client[@]}" drill-locked "$base"
  task_python 120 "$runner_cid" "${client[@]}" drill-check "$base" "$state"
  task_python 60 "$runner_cid" inside_checks.py duplicate-refused --state "$state"
}
