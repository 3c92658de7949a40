# shellcheck shell=bash
# The API keys of stack/swarm.sh, which sources this file: the key file the api reads (the
# secret api_keys, made from SECRETS_DIR/api_keys) and the api-key step that adds or revokes a
# key on the running stack. stack/api_keys.py reads and writes the file by the API's rules.
#
# A new key is printed once, alone on the last line of the step's output, and stored nowhere;
# only the stack's own two keys are kept, in SECRETS_DIR: admin (write, api_key: for the
# operator, verify's writes, the evidence and the end-to-end load) and verify (read,
# verify_key: verify's check that a read key cannot write, and its browser check). A change
# reaches the api by a deploy: the api rolls over start-first, each new task healthy before an
# old one stops, so no request is lost and every key the old file and the new one share keeps
# working throughout.
#
# Uses swarm.sh's settings (SECRETS_DIR, API_KEYS_PATH, ADMIN_KEY_FILE, VERIFY_KEY_FILE,
# STACK_NAME, STACK_DIR) and helpers (step, info, die, defer, make_workdir, require_stack) and
# deploy.sh's cmd_deploy; resets swarm.sh's VERSION_SET, API_IMAGE_SET and IMAGE_FROM_THIS_RUN
# so that a key change keeps the image the stack runs.

OWN_KEYS="admin verify"

keys_py() { python3 "$STACK_DIR/api_keys.py" "$@"; }

# The stack's own keys and their lines, made once (secrets).
make_api_keys() {
  local out name scope file
  (umask 077 && mkdir -p "$SECRETS_DIR")
  while read -r name scope file; do
    out=$(keys_py ensure "$API_KEYS_PATH" "$name" "$scope" "$file" 2>&1) ||
      die "could not make the API key $name: ${out#api_keys.py ensure: }"
    info "$out"
  done <<<"admin write $ADMIN_KEY_FILE
verify read $VERIFY_KEY_FILE"
}

# require_key_file: the lines the api will read are there and valid (deploy, api-key).
require_key_file() {
  [ -s "$API_KEYS_PATH" ] || die "no API key file $API_KEYS_PATH: run '$0 secrets' first"
  local out
  out=$(keys_py check "$API_KEYS_PATH" 2>&1) || die "the API key file is not valid, nothing changed: ${out#api_keys.py check: }"
  info "$out"
}

# restore_key_file COPY: puts the key file back as it was, unless the change went through
# (the copy is then gone). Deferred: runs on a failure or Ctrl-C.
restore_key_file() {
  [ -e "$1" ] || return 0
  cat "$1" >"$API_KEYS_PATH"
  info "the API key file is as it was ($API_KEYS_PATH): no key was given out; should the api have received the new file already, the next deploy takes it back"
}

# api-key NAME SCOPE | api-key --revoke NAME
cmd_api_key() {
  if [ "$1" = --revoke ]; then
    step "api-key: revoke the key $2 of stack $STACK_NAME"
  else
    step "api-key: a new $2 key named $1 for stack $STACK_NAME"
  fi
  require_key_file
  require_stack
  local work out key=""
  make_workdir work
  if [ "$1" = --revoke ]; then
    local keep=()
    for out in $OWN_KEYS; do keep+=(--keep "$out"); done
    out=$(keys_py revoke "$API_KEYS_PATH" "$2" "${keep[@]}" --out "$work/new" 2>&1) || die "${out#api_keys.py revoke: }"
  else
    key=$(keys_py add "$API_KEYS_PATH" "$1" "$2" --out "$work/new" 2>&1) || die "${key#api_keys.py add: }"
  fi
  cp -p "$API_KEYS_PATH" "$work/before"
  defer restore_key_file "$work/before"
  cat "$work/new" >"$API_KEYS_PATH"
  chmod 600 "$API_KEYS_PATH"
  # The image the stack runs, whatever VERSION or API_IMAGE say: only the keys change.
  # shellcheck disable=SC2034  # swarm.sh's settings, read by cmd_deploy
  VERSION_SET="" API_IMAGE_SET="" IMAGE_FROM_THIS_RUN=""
  cmd_deploy
  rm -f "$work/before"
  if [ "$1" = --revoke ]; then
    printf '\napi-key: %s revoked: every api task runs without it, and it gets 401\n' "$2"
  else
    printf '\napi-key: %s (%s) added; every api task accepts it. The key, shown this once and kept nowhere:\n' "$1" "$2"
    printf '%s\n' "$key"
  fi
}
