#!/usr/bin/env bash
# Evidence of the API and its deployment: runs the tests, a curl session against the API,
# then each deployment step with stack/swarm.sh, keeps what the terminal showed as a picture
# named after the step (evidencias/N-name.png, with the plain text beside it as N-name.txt),
# takes Chromium screenshots of the API through the ingress (/docs with a search run from the
# page among them), and rewrites the "This run" section of evidencias/README.md.
#
#   bash tools/evidence.sh                 every step, in the order of the task
#   bash tools/evidence.sh verify browser  only these steps (their pictures are replaced)
#   bash tools/evidence.sh help            the steps, their pictures and every setting
#
# Needs what stack/swarm.sh needs (docker, curl, openssl), the README's test setup (.venv with
# tox), a Python with requirements.txt and requirements-dev.txt (`tox -e evidence` runs this
# script in one) and Chromium from the system's packages (apt-get install chromium
# fonts-dejavu-core).
# A step that fails still leaves its picture; the script then stops (KEEP_GOING=1: goes on
# with the next steps) and exits non-zero.
# API keys never reach a picture, a .txt or a command line: curl reads the Authorization
# header from a file (-H @FILE, made in SECRETS_DIR with mode 600 and removed at the end), the
# renderer reads the key from its file (--key-file).
set -euo pipefail

# stack/swarm.sh's settings (STACK_NAME, API_IMAGE, HTTP_PORT, ENDPOINT_CONTEXT, ...), STACK_DIR,
# PROJECT_DIR and its output helpers: sourced, it defines them and runs no step.
# shellcheck source=stack/swarm.sh
source "$(dirname "${BASH_SOURCE[0]}")/../stack/swarm.sh"
cd "$PROJECT_DIR"  # commands are shown, and run, relative to the repository root

# --- settings ------------------------------------------------------------------------------
EVIDENCE_DIR=${EVIDENCE_DIR:-evidencias}  # relative to the repository root, or absolute
EVIDENCE_STEPS=${EVIDENCE_STEPS:-tests api build push swarm labels deploy services verify https browser}
KEEP_GOING=${KEEP_GOING:-0}
SWARM_SH=${SWARM_SH:-stack/swarm.sh}
RENDERER=${RENDERER:-tools/evidence_render.py}
PYTHON=${PYTHON:-python3}
TOX=${TOX:-.venv/bin/tox}  # the README's test setup
# The renderer shares the deployed browser check (stack/browser_check.py).
export PYTHONPATH="$STACK_DIR${PYTHONPATH:+:$PYTHONPATH}"
# Said in the caption of every deployment picture when images stand in for official ones,
# e.g. STAND_IN_NOTE="mongo:8.0 here is a wire-compatible stand-in, not MongoDB".
STAND_IN_NOTE=${STAND_IN_NOTE:-}
API_PORT=${API_PORT:-8000}  # where the api step serves the API (in-memory store) for curl
SEARCH_QUERY=${SEARCH_QUERY:-evidencia}  # what the browser searches for
SEED_USER=${SEED_USER:-1}                # 1: create the demo user the search finds (once)
EVIDENCE_MAX_LINES=${EVIDENCE_MAX_LINES:-100}
export EVIDENCE_MAX_LINES

DEMO_USER="{\"name\": \"Evidencia Semana4\", \"email\": \"$SEARCH_QUERY@example.com\", \"username\": \"$SEARCH_QUERY\"}"

ALL_STEPS=(tests api build push swarm labels deploy services verify https browser)
# The pictures, in the order of the task (a step's number is the task's, not the run's).
PICTURES=(1-api-pruebas 1-api-curl 2-dockerfile-build 2-registro-push 3-swarm-nodos 4-etiquetas
  5-stack-servicios "6-despliegue-$STACK_NAME" 7-verificacion 7-https-curl 7-navegador-api
  7-navegador-redireccion 7-navegador-docs)

# --- helpers --------------------------------------------------------------------------------
banner() { printf '\n### evidence %s: %s\n' "$1" "$2"; }

# One picture: evidence_begin NAME TITLE, then capture CMD... for each command, then
# evidence_end. After a command fails the rest of the picture's commands are skipped.
evidence_begin() {
  EV_NAME=$1 EV_TITLE=$2 EV_RC=0 EV_N=0
  [[ -z $STAND_IN_NOTE || $EV_NAME == 1-* ]] || EV_TITLE+=" ($STAND_IN_NOTE)"
  EV_BLOCKS=()
  banner "$EV_NAME" "$EV_TITLE"
}

capture() {
  [ "$EV_RC" -eq 0 ] || return 0
  local shown out rc
  shown=$(quote_cmd "$@")
  EV_N=$((EV_N + 1))
  out=$WORK/$EV_NAME.$EV_N.out
  printf '$ %s\n' "$shown"
  set +e
  "$@" </dev/null 2>&1 | tee "$out"
  rc=${PIPESTATUS[0]}
  set -e
  [ ! -s "$out" ] || [ -z "$(tail -c 1 "$out")" ] || echo  # output without a final newline
  EV_BLOCKS+=(--block "$shown" "$out" "$rc")
  EV_RC=$rc
}

evidence_end() {
  "$PYTHON" "$RENDERER" text --title "$EV_TITLE" \
    --out "$EVIDENCE_DIR/$EV_NAME.png" --txt "$EVIDENCE_DIR/$EV_NAME.txt" "${EV_BLOCKS[@]}" ||
    { info "could not render $EVIDENCE_DIR/$EV_NAME.png"; return 2; }
  [ "$EV_RC" -eq 0 ] || info "$EV_NAME: a command failed (exit status $EV_RC)"
  return "$EV_RC"
}

# --- steps ------------------------------------------------------------------------------------
step_tests() {
  evidence_begin 1-api-pruebas "the API's tests: ruff, shellcheck, mypy --strict, pytest, /docs in Chromium"
  capture "$TOX" -e lint,type,test
  capture "$TOX" -e browser
  evidence_end
}

# header_file VAR NAME KEY_FILE: SECRETS_DIR/NAME.header holds "Authorization: Bearer <the key
# in KEY_FILE>" (mode 600), for curl -H @FILE; removed when the script ends. VAR gets its path
# relative to the repository, as commands are shown.
header_file() {
  local file=$SECRETS_DIR/$2.header
  (umask 077 && mkdir -p "$SECRETS_DIR" && printf 'Authorization: Bearer %s\n' "$(<"$3")" >"$file")
  HEADER_FILES+=("$file")
  printf -v "$1" '%s' "${file#"$PROJECT_DIR"/}"
}
HEADER_FILES=()

# curl_json METHOD PATH [BODY]: one request to the API served by step_api, with its key,
# status on its own line
curl_json() {
  local args=(-sS -m 10 -X "$1" -H @"$LOCAL_HEADER" -w '\nHTTP %{http_code}\n')
  [ -z "${3:-}" ] || args+=(-H 'Content-Type: application/json' --data "$3")
  capture curl "${args[@]}" "http://127.0.0.1:$API_PORT$2"
}

step_api() {
  evidence_begin 1-api-curl "the API with curl and a key: one user, a batch, a taken email (409), a search"
  local pid i made line
  # A write key for this server only: its line in the server's environment, the key in a file.
  made=$(keys_py new evidence write)
  line=$(sed -n 1p <<<"$made")
  (umask 077 && sed -n 2p <<<"$made" >"$WORK/local.key")
  header_file LOCAL_HEADER evidence-local "$WORK/local.key"
  # One worker: the in-memory store lives in its process.
  MONGO_URI=mongomock:// API_KEYS=$line GUNICORN_CMD_ARGS="" "$PYTHON" -m gunicorn --workers=1 \
    --bind="127.0.0.1:$API_PORT" 'usersapi:create_app()' >"$WORK/gunicorn.log" 2>&1 &
  pid=$!
  for ((i = 0; i < 50; i++)); do
    curl -sf -o /dev/null "http://127.0.0.1:$API_PORT/health" && break
    sleep 0.2
  done
  curl_json POST /users '{"name": "Ada Lovelace", "email": "Ada@Example.com", "username": "ada"}'
  curl_json POST /users '[{"name": "Alan Turing", "email": "alan@example.com", "username": "alan"},
 {"name": "Grace Hopper", "email": "grace@example.com", "username": "grace"}]'
  curl_json POST /users '{"name": "Ada King", "email": "ada@example.com", "username": "adaking"}'
  curl_json GET '/users/search?q=hopper'
  kill "$pid" && wait "$pid" || true
  # A 409 is what the third request is for: the step fails only on other surprises.
  grep -q '^HTTP 409$' "$WORK/1-api-curl.3.out" || { info "the taken email did not give 409"; EV_RC=1; }
  evidence_end
}

step_build() {
  evidence_begin 2-dockerfile-build "Dockerfile: the API image is built, with its size"
  capture "$SWARM_SH" build
  evidence_end
}

step_push() {
  local registry=${API_IMAGE%%/*}
  [ "$registry" = docker.io ] && registry="Docker Hub" || registry+=", not Docker Hub"
  evidence_begin 2-registro-push "the API image is pushed to $registry"
  capture "$SWARM_SH" push
  capture docker image inspect --format '{{join .RepoDigests "\n"}}' "$API_IMAGE"
  evidence_end
}

step_swarm() {
  evidence_begin 3-swarm-nodos "swarm: a manager and two worker nodes"
  capture "$SWARM_SH" nodes
  capture "$SWARM_SH" swarm
  capture docker --context "$ENDPOINT_CONTEXT" info --format \
    'swarm {{.Swarm.LocalNodeState}}: {{.Swarm.Nodes}} nodes, {{.Swarm.Managers}} manager, node {{.Name}} is manager: {{.Swarm.ControlAvailable}}'
  evidence_end
}

step_labels() {
  evidence_begin 4-etiquetas "node labels: app=database, app=ingress, app=api"
  capture "$SWARM_SH" labels  # ends with every node's labels
  evidence_end
}

step_deploy() {
  evidence_begin "6-despliegue-$STACK_NAME" "the stack is deployed as $STACK_NAME"
  capture "$SWARM_SH" secrets
  capture "$SWARM_SH" deploy
  capture docker --context "$ENDPOINT_CONTEXT" stack ls
  evidence_end
}

step_services() {
  evidence_begin 5-stack-servicios "the services of $STACK_NAME and where they run (placement)"
  capture docker --context "$ENDPOINT_CONTEXT" stack services "$STACK_NAME"
  capture docker --context "$ENDPOINT_CONTEXT" service inspect --format \
    '{{.Spec.Name}}  placement={{with .Spec.TaskTemplate.Placement}}{{json .Constraints}} {{json .Preferences}}{{end}}' \
    "${STACK_NAME}_mongo" "${STACK_NAME}_api" "${STACK_NAME}_ingress"
  capture docker --context "$ENDPOINT_CONTEXT" stack ps --filter desired-state=running \
    --format 'table {{.Name}}\t{{.Node}}\t{{.CurrentState}}\t{{.Ports}}' "$STACK_NAME"
  evidence_end
}

step_verify() {
  evidence_begin 7-verificacion "verification of the running stack (PASS/FAIL per check)"
  capture "$SWARM_SH" verify
  evidence_end
}

step_https() {
  evidence_begin 7-https-curl "the API over https through the ingress with the stack's key, without one (401), and http redirected to https"
  local header
  header_file header authorization "$ADMIN_KEY_FILE"
  if [ "$SEED_USER" = 1 ]; then
    # 201 the first time, 409 (email in use) once the demo user exists: both are fine.
    capture curl -sS -k -m 10 -X POST -H @"$header" -H 'Content-Type: application/json' \
      --data "$DEMO_USER" -w '\nHTTP %{http_code}\n' "$HTTPS_URL/users"
  fi
  capture curl -sS -I -m 10 "$HTTP_URL/users?limit=5"
  capture curl -sS -k -i -m 10 -H @"$header" "$HTTPS_URL/users/search?q=$SEARCH_QUERY"
  capture curl -sS -k -m 10 -D - -o /dev/null "$HTTPS_URL/users?limit=5"
  evidence_end
}

step_browser() {
  local rc=0 expect_text=()
  [ "$SEED_USER" = 1 ] && expect_text=(--expect-text "$SEARCH_QUERY")
  banner 7-navegador-api "Chromium opens the search over https"
  "$PYTHON" "$RENDERER" url --insecure --expect-status 200 --expect-scheme https "${expect_text[@]}" \
    --key-file "$VERIFY_KEY_FILE" \
    --title "Chromium: GET /users/search?q=$SEARCH_QUERY over https through the ingress, with the read key verify" \
    --url "$HTTPS_URL/users/search?q=$SEARCH_QUERY" \
    --out "$EVIDENCE_DIR/7-navegador-api.png" --txt "$EVIDENCE_DIR/7-navegador-api.txt" || rc=$?
  # No key here: a key is never sent over plain http, where the redirect answers.
  banner 7-navegador-redireccion "Chromium opens http:// and lands on https://"
  "$PYTHON" "$RENDERER" url --insecure --expect-status 200 --expect-scheme https --expect-redirect \
    --title "Chromium: http://$PUBLIC_HOST:$HTTP_PORT is redirected to https" \
    --url "$HTTP_URL/docs" \
    --out "$EVIDENCE_DIR/7-navegador-redireccion.png" \
    --txt "$EVIDENCE_DIR/7-navegador-redireccion.txt" || rc=$?
  banner 7-navegador-docs "Chromium runs a search from the interactive docs over https"
  "$PYTHON" "$RENDERER" docs --insecure --query "$SEARCH_QUERY" --url "$HTTPS_URL" \
    --key-file "$VERIFY_KEY_FILE" \
    --title "Chromium: $HTTPS_URL/docs, Authorize with the read key, a search run from the page (Try it out, Execute)" \
    --out "$EVIDENCE_DIR/7-navegador-docs.png" --txt "$EVIDENCE_DIR/7-navegador-docs.txt" || rc=$?
  return "$rc"
}

# --- README -----------------------------------------------------------------------------------
README_BEGIN='<!-- BEGIN this-run: written by tools/evidence.sh; edits here are replaced -->'
README_END='<!-- END this-run -->'

or_unknown() { local out; out=$("$@" 2>/dev/null) && [ -n "$out" ] && printf '%s' "$out" || printf 'unknown'; }

this_run_section() {
  local name txt when host rc result image revision dirty=""
  revision=$(or_unknown git rev-parse --short HEAD)
  local pathspec=(.)  # changes other than the evidence this run is writing
  [[ $EVIDENCE_DIR == /* ]] || pathspec+=(":(exclude)$EVIDENCE_DIR")
  [ -z "$(git status --porcelain -- "${pathspec[@]}" 2>/dev/null)" ] || dirty=", with uncommitted changes"
  echo "$README_BEGIN"
  echo "## This run"
  echo
  echo "Last written by \`tools/evidence.sh\` on $(date -u '+%Y-%m-%d %H:%M:%S') UTC, steps: $RUN_STEPS;" \
    "result: $RUN_RESULT."
  echo
  echo "| picture | captured (UTC) | on host | result |"
  echo "| --- | --- | --- | --- |"
  for name in "${PICTURES[@]}"; do
    txt=$EVIDENCE_DIR/$name.txt
    if [ -f "$EVIDENCE_DIR/$name.png" ] && [ -f "$txt" ]; then
      when="" host="" rc=""
      read -r when host rc < <(sed -n 's/^# captured \([^ ]*\) on host \([^ ]*\) .*(exit status \([0-9]*\)).*/\1 \2 \3/p' "$txt" | head -n 1) || true
      if [ "${rc:-}" = 0 ]; then result=ok; else result="**failed** (exit status ${rc:-?})"; fi
      echo "| [$name.png]($name.png) ([text]($name.txt)) | ${when:-?} | ${host:-?} | $result |"
    else
      echo "| $name.png | not captured yet | | |"
    fi
  done
  echo
  echo "Where and with what:"
  echo
  echo "- host: \`$(uname -n)\`, $(or_unknown sed -n 's/^PRETTY_NAME="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' /etc/os-release), kernel $(uname -sr), $(uname -m)"
  echo "- repository: commit \`$revision\`$dirty"
  echo "- Docker engine on the host: $(or_unknown docker version --format 'server {{.Server.Version}} (API {{.Server.APIVersion}}, {{.Server.Os}}/{{.Server.Arch}}), client {{.Client.Version}}')"
  echo "- swarm nodes: \`$DIND_IMAGE\` containers ($(or_unknown docker image inspect --format '{{.Id}}' "$DIND_IMAGE" | cut -c1-19)), engine of the manager: $(or_unknown docker --context "$ENDPOINT_CONTEXT" version --format '{{.Server.Version}}')"
  echo "- API image: \`$API_IMAGE\` ($(or_unknown docker image inspect --format '{{.Id}}' "$API_IMAGE" | cut -c1-19), $(or_unknown docker image inspect --format '{{.Size}}' "$API_IMAGE" | awk '{ if ($1 + 0 > 0) printf "%d MB", $1 / 1000000; else print $1 }')), base \`$BASE_IMAGE\`"
  echo "- images the services of \`$STACK_NAME\` run (from the swarm's service specs):"
  local services
  services=$(docker --context "$ENDPOINT_CONTEXT" service ls --filter "label=com.docker.stack.namespace=$STACK_NAME" \
    --format '{{.Name}} {{.Image}}' 2>/dev/null || true)
  if [ -n "$services" ]; then
    while read -r name image; do
      echo "  - \`$name\`: \`$(docker --context "$ENDPOINT_CONTEXT" service inspect --format '{{.Spec.TaskTemplate.ContainerSpec.Image}}' "$name" 2>/dev/null || echo "$image")\`"
    done <<<"$services"
  else
    echo "  - (no stack running when the README was written)"
  fi
  echo "- browser for the screenshots and renderer: $(or_unknown "$PYTHON" "$RENDERER" browser-version) headless, driven by Playwright $(or_unknown "$PYTHON" -c 'from importlib.metadata import version; print(version("playwright"))'), $(or_unknown "$PYTHON" --version)"
  echo "- settings: STACK_NAME=$STACK_NAME NODE_PREFIX=$NODE_PREFIX HTTP_PORT=$HTTP_PORT HTTPS_PORT=$HTTPS_PORT PUBLIC_HOST=$PUBLIC_HOST SEARCH_QUERY=$SEARCH_QUERY"
  echo "$README_END"
}

write_readme() {
  local readme=$EVIDENCE_DIR/README.md section=$WORK/this-run.md
  this_run_section >"$section"
  if [ -f "$readme" ] && grep -qF "$README_BEGIN" "$readme" && grep -qF "$README_END" "$readme"; then
    awk -v begin="$README_BEGIN" -v end="$README_END" -v section="$section" '
      $0 == begin { while ((getline line < section) > 0) print line; skip = 1; next }
      $0 == end { skip = 0; next }
      !skip { print }' "$readme" >"$WORK/README.md"
  else
    { [ ! -f "$readme" ] || { cat "$readme"; echo; }; cat "$section"; } >"$WORK/README.md"
  fi
  cat "$WORK/README.md" >"$readme"
  info "updated $readme (section \"This run\")"
}

# --- main -------------------------------------------------------------------------------------
step_lines() {
  local deploy=6-despliegue-$STACK_NAME.png
  printf '  %-9s %-28s %s\n' \
    tests 1-api-pruebas.png "$TOX -e lint,type,test, then -e browser" \
    api 1-api-curl.png "curl against the API (gunicorn, in-memory store, port $API_PORT)" \
    build 2-dockerfile-build.png "$SWARM_SH build (image build, docker image ls)" \
    push 2-registro-push.png "$SWARM_SH push, the pushed image's digest" \
    swarm 3-swarm-nodos.png "$SWARM_SH nodes, swarm (docker node ls)" \
    labels 4-etiquetas.png "$SWARM_SH labels, every node's labels" \
    deploy "$deploy" "$SWARM_SH secrets, deploy, docker stack ls" \
    services 5-stack-servicios.png "docker stack services, placement, docker stack ps" \
    verify 7-verificacion.png "$SWARM_SH verify (PASS/FAIL lines)" \
    https 7-https-curl.png "curl with the key: demo user, http -> 301, search; no key -> 401" \
    browser 7-navegador-api.png "Chromium: the search JSON over https, read key" \
    "" 7-navegador-redireccion.png "Chromium: http://.../docs lands on https://" \
    "" 7-navegador-docs.png "Chromium: /docs, Authorize, a search run from the page, its 200"
}

usage() {
  cat <<EOF
usage: bash tools/evidence.sh [STEP...]

Runs the deployment step by step with $SWARM_SH and keeps a picture of each step in
$EVIDENCE_DIR/ (PNG, plus the same text as .txt), then updates $EVIDENCE_DIR/README.md.

steps (default, in this order: $EVIDENCE_STEPS):
$(step_lines)

settings (environment variables; current value, default in brackets):
  EVIDENCE_DIR        $EVIDENCE_DIR  [evidencias, relative to the repository]
  EVIDENCE_STEPS      $EVIDENCE_STEPS
  KEEP_GOING          $KEEP_GOING  [0: stop at the first failing step; 1: go on]
  SWARM_SH            $SWARM_SH  [stack/swarm.sh]
  RENDERER            $RENDERER  [tools/evidence_render.py]
  PYTHON              $PYTHON  [python3; with requirements.txt and requirements-dev.txt]
  TOX                 $TOX  [.venv/bin/tox, the README's test setup]
  API_PORT            $API_PORT  [8000; the api step's local server]
  CHROMIUM            ${CHROMIUM:-/usr/bin/chromium}  [/usr/bin/chromium]
  STAND_IN_NOTE       $STAND_IN_NOTE  [empty; said in every deployment picture's caption]
  SEARCH_QUERY        $SEARCH_QUERY  [evidencia]
  SEED_USER           $SEED_USER  [1: create the demo user $SEARCH_QUERY@example.com if missing]
  EVIDENCE_MAX_LINES  $EVIDENCE_MAX_LINES  [100: longer outputs keep head and tail, marked]
  shared with stack/swarm.sh: STACK_NAME=$STACK_NAME NODE_PREFIX=$NODE_PREFIX HTTP_PORT=$HTTP_PORT
  HTTPS_PORT=$HTTPS_PORT PUBLIC_HOST=$PUBLIC_HOST (and the rest of its settings, passed on)
EOF
}

preflight() {
  local cmd
  for cmd in docker curl "$PYTHON"; do
    command -v "$cmd" >/dev/null || die "$cmd is not installed"
  done
  [ -x "$SWARM_SH" ] || die "$SWARM_SH is missing or not executable"
  "$PYTHON" -c 'import playwright, flask, mongomock, gunicorn' 2>/dev/null ||
    die "$PYTHON lacks requirements.txt or requirements-dev.txt: run it as 'tox -e evidence'"
  [[ " ${RUN_STEPS} " != *" tests "* ]] || [ -x "$TOX" ] ||
    die "no $TOX: run the README's test command first, or set TOX"
  "$PYTHON" "$RENDERER" check || die "cannot render: install chromium and fonts-dejavu-core (apt-get install -y chromium fonts-dejavu-core)"
}

main() {
  case ${1:-} in
    help | -h | --help) usage; return 0 ;;
  esac
  local steps=() step known failed=() rc
  if [ "$#" -gt 0 ]; then steps=("$@"); else read -r -a steps <<<"$EVIDENCE_STEPS"; fi
  for step in "${steps[@]}"; do
    known=0
    for rc in "${ALL_STEPS[@]}"; do [ "$rc" = "$step" ] && known=1; done
    [ "$known" = 1 ] || { usage >&2; die "unknown step: $step"; }
  done
  WORK=$(mktemp -d)
  trap 'rm -rf "$WORK" "${HEADER_FILES[@]}"' EXIT
  RUN_STEPS="${steps[*]}"
  banner preflight "tools and evidence directory"
  preflight
  mkdir -p "$EVIDENCE_DIR"
  info "pictures go to $EVIDENCE_DIR/ (from $PROJECT_DIR)"

  for step in "${steps[@]}"; do
    rc=0
    "step_$step" || rc=$?
    if [ "$rc" -ne 0 ]; then
      failed+=("$step")
      if [ "$KEEP_GOING" != 1 ]; then
        info "step $step failed (exit status $rc): stopping (KEEP_GOING=1 goes on)"
        break
      fi
    fi
  done
  if [ "${#failed[@]}" -eq 0 ]; then RUN_RESULT="every step passed"; else RUN_RESULT="failed: ${failed[*]}"; fi
  banner README "$EVIDENCE_DIR/README.md"
  write_readme
  printf '\nevidence: %s; pictures in %s/\n' "$RUN_RESULT" "$EVIDENCE_DIR"
  [ "${#failed[@]}" -eq 0 ]
}

main "$@"
