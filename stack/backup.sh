# shellcheck shell=bash
# The backup, restore and drill steps of stack/swarm.sh, which sources this file. They use the
# settings and helpers swarm.sh defines, and verify.sh's (api, pass, fail, task_container,
# API_CLIENT_PY).
#
# The database tools run inside the mongo task as MongoDB's root user: the password stays in
# the task's /run/secrets and reaches mongodump/mongorestore through --config (a file given
# by the shell, /dev/fd/N), never a command line. The archive streams through `docker exec`;
# nothing is left inside the containers.

# in_mongo CMD: runs the shell command CMD in the mongo task, stdin and stdout streamed.
# $MONGO_TOOL_AUTH in CMD expands, inside the task, to the tools' credentials options.
in_mongo() {
  local cid
  cid=$(task_container "$MANAGER" mongo)
  [ -n "$cid" ] || die "no running mongo task of $STACK_NAME on $MANAGER: deploy first"
  docker exec -i "$MANAGER" docker exec -i \
    -e "MONGO_TOOL_AUTH=--username=$MONGO_ROOT_USER --authenticationDatabase=admin" \
    "$cid" bash -c "$1"
}

# shellcheck disable=SC2016  # expanded inside the mongo task
TOOL_CONFIG='--config=<(pw=$(< /run/secrets/mongo_root_password); printf "password: %s\n" "$pw") $MONGO_TOOL_AUTH'

cmd_backup() {
  local file=${1:-}
  require_node "$MANAGER"
  if [ -z "$file" ]; then
    file=$BACKUP_DIR/$STACK_NAME-$(date -u +%Y%m%dT%H%M%SZ).archive.gz
  fi
  step "backup: mongodump of $MONGO_DB in stack $STACK_NAME to $file"
  [ ! -e "$file" ] || die "$file exists: give another file name"
  local dir
  dir=$(dirname "$file")
  (umask 077 && mkdir -p "$dir") || die "cannot create the directory $dir"
  show_cmd docker exec -i "$MANAGER" docker exec -i '<mongo task>' \
    mongodump --config=/dev/fd/N --db="$MONGO_DB" --archive --gzip '>' "$file"
  # Readable by its owner only from the first byte: it holds personal data.
  local status=0
  (umask 077 && in_mongo "mongodump $TOOL_CONFIG --db=$MONGO_DB --archive --gzip" >"$file") || status=$?
  if [ "$status" -ne 0 ] || ! [ -s "$file" ] || ! gzip -t "$file" 2>/dev/null; then
    rm -f "$file"
    die "mongodump failed (exit $status): no backup written"
  fi
  chmod 600 "$file"
  info "wrote $file ($(wc -c <"$file") bytes, mode 600)"
  BACKUP_FILE=$file
}

# check_archive FILE: refuses a file that is missing, empty, not gzip, truncated or corrupt, or
# that holds no $MONGO_DB.users; the dry run reads the whole archive and writes nothing.
check_archive() {
  local file=$1 out
  [ -e "$file" ] || die "$file: no such file"
  [ -f "$file" ] || die "$file: not a regular file"
  [ -r "$file" ] || die "$file: not readable"
  [ -s "$file" ] || die "$file: empty file, not a backup"
  gzip -t "$file" 2>/dev/null || die "$file: not a complete gzip file (truncated or corrupt): nothing restored"
  info "gzip -t $file: intact"
  show_cmd docker exec -i "$MANAGER" docker exec -i '<mongo task>' \
    mongorestore --config=/dev/fd/N --nsInclude="$MONGO_DB.*" --archive --gzip --dryRun '<' "$file"
  out=$(in_mongo "mongorestore $TOOL_CONFIG --nsInclude='$MONGO_DB.*' --archive --gzip --dryRun" <"$file" 2>&1) ||
    die "$file: mongorestore --dryRun refused it: $({ grep -m1 'Failed' <<<"$out" || tail -n 1 <<<"$out"; } |
      sed 's/^[0-9T:.+-]*[[:space:]]*//'): nothing restored"
  grep -q "reading metadata for $MONGO_DB\\.users " <<<"$out" ||
    die "$file: holds no $MONGO_DB.users collection (a backup of another database?): nothing restored"
  info "mongorestore --dryRun: a complete archive of $MONGO_DB.users"
}

cmd_restore() {
  local file=${1:-}
  [ -n "$file" ] || die "restore needs the archive: restore FILE"
  require_node "$MANAGER"
  step "restore: $MONGO_DB of stack $STACK_NAME from $file (checked first)"
  check_archive "$file"
  run_restore "$file"
}

run_restore() {
  show_cmd docker exec -i "$MANAGER" docker exec -i '<mongo task>' \
    mongorestore --config=/dev/fd/N --nsInclude="$MONGO_DB.*" --drop --archive --gzip '<' "$1"
  in_mongo "mongorestore $TOOL_CONFIG --nsInclude='$MONGO_DB.*' --drop --archive --gzip" <"$1" ||
    die "mongorestore failed"
  info "restored $MONGO_DB from $1; the API keeps running"
}

# all_user_ids: every user's id and email through the API, sorted, one "id email" a line.
all_user_ids() {
  local offset=0 out code body page
  while true; do
    out=$(api GET "/users?limit=500&offset=$offset")
    code=${out%%$'\n'*}; body=${out#*$'\n'}
    [ "$code" = 200 ] || { echo "GET /users -> $code"; return 1; }
    page=$(grep -o '"id": *"[0-9a-f]*"[^}]*"email": *"[^"]*"' <<<"$body" |
      sed 's/"id": *"\([0-9a-f]*\)".*"email": *"\([^"]*\)"/\1 \2/')
    [ -n "$page" ] || break
    printf '%s\n' "$page"
    offset=$((offset + 500))
  done | sort
}

# duplicate_email_refused EMAIL: an insert straight into MongoDB (as the API's own user, from
# an api container) of a second document with EMAIL: True when the unique index refuses it.
duplicate_email_refused() {
  local cid
  cid=$(task_container "$WORKER2" api)
  docker exec -i "$WORKER2" docker exec -i -e "DUP_EMAIL=$1" "$cid" python - 2>&1 <<PY
$API_CLIENT_PY
from pymongo.errors import DuplicateKeyError
users = c[env["MONGO_DB"]]["users"]
try:
    users.insert_one({"name": "dup", "email": env["DUP_EMAIL"], "username": "dup"})
except DuplicateKeyError:
    print(True)
else:
    users.delete_many({"username": "dup", "email": env["DUP_EMAIL"], "name": "dup"})
    print(False)
PY
}

cmd_drill() {
  step "drill: back up $MONGO_DB, change it, restore it, and find exactly what was backed up"
  local node
  for node in "${NODES[@]}"; do require_node "$node"; done
  CHECKS=0
  FAILED=0
  WORK=$(mktemp -d)
  trap 'rm -rf "$WORK"' EXIT
  wait_ready || true
  local tag out code body ids_backed ids_changed ids_restored first_id first_email extra_id
  tag=d$(date +%s)$RANDOM
  out=$(api POST /users "[{\"name\": \"Drill A\", \"email\": \"$tag.a@example.com\", \"username\": \"${tag}a\"},
    {\"name\": \"Drill B\", \"email\": \"$tag.b@example.com\", \"username\": \"${tag}b\"},
    {\"name\": \"Drill C\", \"email\": \"$tag.c@example.com\", \"username\": \"${tag}c\"}]")
  code=${out%%$'\n'*}; body=${out#*$'\n'}
  # json_field reads the same (last) user of the batch for both
  first_id=$(json_field id <<<"$body")
  first_email=$(json_field email <<<"$body")
  if [ "$code" = 201 ] && [ -n "$first_id" ]; then
    pass "drill: 3 users created through the API (POST /users -> 201)"
  else
    fail "drill: creating users: POST /users -> $code"
    return 1
  fi
  ids_backed=$(all_user_ids) || { fail "drill: listing users: $ids_backed"; return 1; }
  cmd_backup "$WORK/drill.archive.gz"
  local mode
  mode=$(stat -c %a "$BACKUP_FILE")
  if [ "$mode" = 600 ] && gzip -t "$BACKUP_FILE"; then
    pass "drill: backup of $(wc -l <<<"$ids_backed") users written, mode $mode, gzip intact"
  else
    fail "drill: backup file mode $mode or not intact"
  fi
  out=$(api DELETE "/users/$first_id"); code=${out%%$'\n'*}
  out=$(api POST /users "{\"name\": \"Drill D\", \"email\": \"$tag.d@example.com\", \"username\": \"${tag}d\"}")
  extra_id=$(json_field id <<<"${out#*$'\n'}")
  ids_changed=$(all_user_ids)
  if [ "$code" = 204 ] && [ -n "$extra_id" ] && [ "$ids_changed" != "$ids_backed" ]; then
    pass "drill: after the backup, user $first_id deleted (204) and user $extra_id added (201)"
  else
    fail "drill: changing users: delete -> $code, added '$extra_id'"
  fi
  step "drill: restore"
  cmd_restore "$BACKUP_FILE"
  ids_restored=$(all_user_ids)
  if [ "$ids_restored" = "$ids_backed" ]; then
    pass "drill: after restore, exactly the $(wc -l <<<"$ids_backed") backed-up users with their ids: $first_id is back, $extra_id is gone"
  else
    fail "drill: after restore the users differ from the backup: $(diff <(printf '%s\n' "$ids_backed") <(printf '%s\n' "$ids_restored") | grep '^[<>]' | head -n 5 | xargs)"
  fi
  out=$(api GET "/users/$first_id"); code=${out%%$'\n'*}
  if [ "$code" = 200 ] && grep -q "$first_email" <<<"$out"; then
    pass "drill: GET /users/$first_id -> 200 through the running API, no restart"
  else
    fail "drill: GET /users/$first_id after restore -> $code"
  fi
  out=$(duplicate_email_refused "$first_email")
  if [ "$out" = True ]; then
    pass "drill: the unique email index holds after restore: inserting $first_email again straight into MongoDB -> duplicate key error"
  else
    fail "drill: unique email index after restore: a duplicate insert was not refused ($out)"
  fi
  printf '\ndrill: %d checks, %d failed\n' "$CHECKS" "$FAILED"
  [ "$FAILED" -eq 0 ]
}
