# shellcheck shell=bash
# The verify step of stack/swarm.sh, which sources this file: checks of the running stack,
# one PASS/FAIL line each, through the same endpoint as every other step. What a client sees
# is checked from this machine (stack/api_checks.py, stack/browser_check.py); what the swarm
# holds, from its JSON (stack/swarm_state.py); what the api's and the ingress's network
# positions reach, from short-lived tasks with exactly their networks (stack/inside_checks.py).
#
# Requests that need a key present the stack's own: admin (write) for what verify changes,
# verify (read) for what a read key may and may not do and for the browser; each is read from
# its file in SECRETS_DIR, never given on a command line. verify keeps within the ingress's
# limits (RATE_LIMIT, RATE_BURST): the race waits between its rounds, and the burst that
# proves the limit comes last and waits until the limit has forgotten it.
#
# Uses swarm.sh's settings (STACK_NAME, HTTPS_URL, HTTP_URL, HTTPS_PORT, HTTP_PORT, MONGO_DB,
# WAIT_TIMEOUT, CALL_TIMEOUT, PYTHON, CHROMIUM, PROJECT_DIR, STACK_DIR, ENDPOINT_CONTEXT,
# ADMIN_KEY_FILE, VERIFY_KEY_FILE, TLS_CERT_FILE, TLS_CERT_PATH, RATE_LIMIT, RATE_BURST) and
# helpers (step, info, die, pass, fail, tally, bounded, sw, sw_for, require_stack,
# make_workdir, snapshot, service_json, service_image, state_py) and tasks.sh's (task_start,
# task_python, task_exec, secret_option); resets swarm.sh's CHECKS and FAILED.

api_py() { python3 "$STACK_DIR/api_checks.py" "$@"; }
admin_py() { api_py --key-file "$ADMIN_KEY_FILE" "$@"; }  # as the stack's write key

# browser_python: prints a Python with Playwright for the browser check: PYTHON if set, else
# the environment of `tox -e browser` (made with the README's .venv/bin/tox when missing).
browser_python() {
  if [ -n "$PYTHON" ]; then
    "$PYTHON" -c 'import playwright' 2>/dev/null ||
      { echo "PYTHON=$PYTHON has no Playwright (pip install -r requirements-browser.txt)"; return 1; }
    echo "$PYTHON"
    return 0
  fi
  local tox=$PROJECT_DIR/.venv/bin/tox python=$PROJECT_DIR/.tox/browser/bin/python
  if ! "$python" -c 'import playwright' 2>/dev/null; then
    [ -x "$tox" ] || {
      echo "no Python with Playwright: run the README's set-up first (python3 -m venv .venv && .venv/bin/pip install -q tox tox-uv), or set PYTHON"
      return 1
    }
    info "the browser check runs in tox -e browser's environment; making it once: .venv/bin/tox -e browser --notest" >&2
    (cd "$PROJECT_DIR" && bounded 900 "$tox" -e browser --notest -q) >&2 ||
      { echo ".venv/bin/tox -e browser --notest failed (see above)"; return 1; }
  fi
  echo "$python"
}

# The interactive docs through the ingress, in the system's Chromium: a search run from the
# page's own controls finds a user just created, and the page asks nothing of another host.
check_browser() {
  local python tag id out rc=0
  if [ ! -x "$CHROMIUM" ]; then
    fail "browser: no Chromium at $CHROMIUM (Debian: apt-get install chromium; or set CHROMIUM)"
    return
  fi
  python=$(browser_python) || { fail "browser: $python"; return; }
  tag=b$(date +%s)$RANDOM
  if ! id=$(admin_py user-create "$HTTPS_URL" "$tag" 2>&1); then
    fail "browser: could not create the user to search for: $id"
    return
  fi
  out=$(CHROMIUM=$CHROMIUM bounded 180 "$python" "$STACK_DIR/browser_check.py" --insecure \
    --key-file "$VERIFY_KEY_FILE" --query "$tag" --expect-id "$id" "$HTTPS_URL" 2>&1) || rc=$?
  if [ "$rc" = 0 ]; then pass "browser (read key): $out"; else fail "browser: $(tail -n 1 <<<"$out")"; fi
  admin_py user-delete "$HTTPS_URL" "$id" >/dev/null 2>&1 || true
}

# service_log_line SERVICE REQUEST_ID: the service's first JSON log line with that request id
# (stdout: nginx's access log; stderr: the api's log). Logs reach the manager a moment after the
# request: it asks again for up to three times the bound of one `docker service logs` (15 s, or
# CALL_TIMEOUT if less; it is known to hang now and then). Prints the line, or why there is none.
service_log_line() {
  local service=$1 request_id=$2 start=$SECONDS out line rc=0 bound=$((CALL_TIMEOUT < 15 ? CALL_TIMEOUT : 15))
  while ((SECONDS - start < 3 * bound)); do
    rc=0
    out=$(sw_for "$bound" service logs --raw --since 10m "${STACK_NAME}_$service" 2>&1) || rc=$?
    line=$(state_py log-line "$request_id" <<<"$out")
    if [ -n "$line" ]; then
      printf '%s' "$line"
      return 0
    fi
    sleep 1
  done
  if [ "$rc" = 124 ]; then
    printf 'none: docker service logs gave no answer within %s s' "$bound"
  else
    printf 'none within %s s' "$((3 * bound))"
  fi
  return 1
}

check_request_id() {
  local rid ids api_line ingress_line ok=1
  rid=verify-$(date +%s)-$RANDOM
  ids=$(admin_py returned-ids "$HTTPS_URL" "/users?limit=1" "$rid" 2>&1) || ok=0
  api_line=$(service_log_line api "$rid") || ok=0
  ingress_line=$(service_log_line ingress "$rid") || ok=0
  [ "$ids" = "$rid" ] || ok=0
  local detail="GET /users?limit=1 with X-Request-ID $rid -> X-Request-ID [$ids]"
  if [ "$ok" = 1 ]; then
    pass "request id end to end: $detail, exactly once; api log: $(cut -c1-220 <<<"$api_line"); ingress log: $(cut -c1-220 <<<"$ingress_line")"
  else
    fail "request id end to end: $detail; api log line: $api_line; ingress log line: $ingress_line"
  fi
}

# From the api's position (its networks, its MongoDB settings and secret) and from the
# ingress's (exactly its networks), in two short-lived tasks of the api's image.
checks_from_inside() {
  local work=$1 image api_cid ingress_cid out mongo_address shown=()
  service_json api "$work/api.json" || die "cannot read the api service"
  service_json ingress "$work/ingress.json" || die "cannot read the ingress service"
  image=$(state_py image --digest "$work/api.json")
  local api_opts=() ingress_opts=() id
  mapfile -t api_opts < <(state_py task-options "$work/api.json" --env-prefix MONGO_)
  api_opts+=("$(secret_option "$work/api.json" mongo_app_password)")
  mapfile -t ingress_opts < <(state_py task-options "$work/ingress.json")
  for id in $(state_py networks "$work/ingress.json"); do
    shown+=("$(sw network inspect --format '{{.Name}}' "$id")")
  done
  task_start api_cid api-position "$image" "${api_opts[@]}"
  task_start ingress_cid ingress-position "$image" "${ingress_opts[@]}"
  out=$(task_python 120 "$api_cid" inside_checks.py api-position --db "$MONGO_DB") ||
    die "the checks from the api's position stopped: $(tail -n 1 <<<"$out")"
  printf '%s\n' "$out"
  mongo_address=$(sed -n 's/^mongo-address //p' <<<"$out")
  task_python 120 "$ingress_cid" inside_checks.py ingress-position \
    --networks "${shown[*]}" --mongo-address "${mongo_address:-none}"
}

# The certificate the ingress serves: TLS_CERT_FILE's when set, else the self-signed one.
check_certificate() {
  local kind="the self-signed certificate"
  [ -z "$TLS_CERT_FILE" ] || kind="your certificate"
  if [ ! -r "$TLS_CERT_PATH" ]; then
    fail "certificate: cannot read $TLS_CERT_PATH"
    return
  fi
  tally api_py certificate "$HTTPS_URL" --cert-file "$TLS_CERT_PATH" --kind "$kind"
}

# What the api's and the ingress's containers may do, from inside: a task of each service's
# image with each service's container settings (read-only root, capabilities, tmpfs mounts,
# user), which tries to write to / and reads its capability sets in /proc/self/status.
lockdown_from_inside() {
  local work=$1 service cid image opts=() out
  for service in api ingress; do
    # Read already by checks_from_inside, unless it stopped first.
    [ -s "$work/$service.json" ] || service_json "$service" "$work/$service.json" ||
      die "cannot read the $service service"
    image=$(state_py image --digest "$work/$service.json")
    mapfile -t opts < <(state_py task-options "$work/$service.json" --lockdown)
    task_start cid "$service-lockdown" "$image" "${opts[@]}"
    out=$(task_exec 60 "$cid" sh -c "$LOCKDOWN_PROBE" 2>&1) || die "the $service lockdown probe failed: $(tail -n 1 <<<"$out")"
    state_py lockdown-check "$work/$service.json" <<<"$out"
  done
}

# Runs as the container's user, in the image's shell (busybox or dash): a write to / and the
# capability sets of this process.
# shellcheck disable=SC2016  # for sh -c, expanded there
LOCKDOWN_PROBE='if (: >/lockdown-probe) 2>/dev/null; then echo "write / ok"; rm -f /lockdown-probe; else echo "write / refused"; fi; id -u; grep -E "^Cap(Eff|Prm|Bnd)" /proc/self/status'

cmd_verify() {
  step "verify: the stack $STACK_NAME against its requirements (PASS/FAIL per line)"
  require_stack
  CHECKS=0
  FAILED=0
  local work image
  make_workdir work
  tally api_py ready "$HTTPS_URL" --timeout "$WAIT_TIMEOUT"
  if snapshot "$work"; then
    tally state_py spec-checks --stack "$STACK_NAME" --http-port "$HTTP_PORT" --https-port "$HTTPS_PORT" "$work"
  else
    fail "the stack's services, tasks and nodes: the swarm did not answer (context $ENDPOINT_CONTEXT)"
  fi
  tally api_py redirect "$HTTP_URL" --https-port "$HTTPS_PORT"
  tally api_py hsts "$HTTPS_URL"
  check_certificate
  tally admin_py access "$HTTPS_URL" --read-key-file "$VERIFY_KEY_FILE"
  tally admin_py crud "$HTTPS_URL"
  image=$(service_image api || true)
  tally api_py version "$HTTPS_URL" --image "$image"
  check_browser
  tally admin_py race "$HTTPS_URL" --rate "$RATE_LIMIT"
  tally checks_from_inside "$work"
  tally lockdown_from_inside "$work"
  check_request_id
  tally api_py request-id-replaced "$HTTPS_URL"
  tally api_py metrics-closed "$HTTPS_URL"
  tally api_py burst "$HTTPS_URL" --rate "$RATE_LIMIT" --burst "$RATE_BURST"
  printf '\nverify: %d checks, %d failed\n' "$CHECKS" "$FAILED"
  [ "$FAILED" -eq 0 ]
}
