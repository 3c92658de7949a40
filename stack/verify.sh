# shellcheck shell=bash
# The verify step of stack/swarm.sh, which sources this file: checks of the running stack,
# one PASS/FAIL line each. It uses the settings and helpers swarm.sh defines.

# --- verify -----------------------------------------------------------------------------------
FAILED=0
CHECKS=0
pass() { CHECKS=$((CHECKS + 1)); printf 'PASS  %s\n' "$*"; }
fail() { CHECKS=$((CHECKS + 1)); FAILED=$((FAILED + 1)); printf 'FAIL  %s\n' "$*"; }

HTTPS_URL=https://$PUBLIC_HOST:$HTTPS_PORT
HTTP_URL=http://$PUBLIC_HOST:$HTTP_PORT
PYTHON=${PYTHON:-python3}  # with Playwright (requirements-browser.txt), for the browser check

# api METHOD PATH [JSON [HEADER]]: prints the status code, then the body, separated by a
# newline; the response headers are left in $WORK/headers
api() {
  local method=$1 path=$2 body=${3:-} header=${4:-}
  local args=(-sk -m 10 -X "$method" -w '%{http_code}' -o "$WORK/body" -D "$WORK/headers")
  [ -n "$body" ] && args+=(-H 'Content-Type: application/json' --data "$body")
  [ -n "$header" ] && args+=(-H "$header")
  local code
  code=$(curl "${args[@]}" "$HTTPS_URL$path" 2>/dev/null) || code=000
  printf '%s\n%s\n' "$code" "$(cat "$WORK/body" 2>/dev/null)"
}

task_container() {  # task_container NODE SERVICE: id of the service's running container there
  docker exec "$1" docker ps -q --filter "label=com.docker.swarm.service.name=${STACK_NAME}_$2" |
    head -n 1
}

check_converged() {
  local states bad
  states=$(service_states 2>/dev/null || true)
  bad=$(awk '$2 != $3 || $3 == 0 || $4 == "updating" || $4 == "rollback_started" || $4 == "paused" {print $1 " " $2 "/" $3}' <<<"$states")
  local summary
  summary=$(awk '{printf "%s%s %s/%s", (NR > 1 ? ", " : ""), $1, $2, $3}' <<<"$states")
  if [ "$(wc -l <<<"$states")" -eq 3 ] && [ -n "$states" ] && [ -z "$bad" ]; then
    pass "services converged: $summary"
  else
    fail "services not converged: ${summary:-no services}"
  fi
}

check_placement() {
  local pair svc want line ok=1 detail=""
  for pair in mongo:database api:api ingress:ingress; do
    svc=${pair%%:*}; want=${pair#*:}
    local nodes
    nodes=$(docker exec "$MANAGER" docker service ps --filter desired-state=running \
      --format '{{.Node}}' "${STACK_NAME}_$svc" 2>/dev/null || true)
    [ -n "$nodes" ] || { ok=0; detail+=" $svc:no-tasks"; continue; }
    for line in $nodes; do
      local label
      label=$(docker exec "$MANAGER" docker node inspect -f '{{index .Spec.Labels "app"}}' "$line")
      [ "$label" = "$want" ] || ok=0
      detail+=" $svc@$line(app=$label)"
    done
  done
  if [ "$ok" = 1 ]; then pass "placement by label:$detail"; else fail "placement by label:$detail"; fi
}

check_ports() {
  local svc ports ok=1 detail=""
  for svc in mongo api ingress; do
    ports=$(docker exec "$MANAGER" docker service inspect -f \
      '{{range .Spec.EndpointSpec.Ports}}{{.PublishedPort}}/{{.PublishMode}} {{end}}' \
      "${STACK_NAME}_$svc" 2>/dev/null || echo '?')
    ports=$(xargs <<<"$ports")
    detail+=" $svc=[${ports}]"
    if [ "$svc" = ingress ]; then
      [ "$ports" = "$HTTP_PORT/host $HTTPS_PORT/host" ] || ok=0
    else
      [ -z "$ports" ] || ok=0
    fi
  done
  if [ "$ok" = 1 ]; then pass "only ingress publishes ports:$detail"; else fail "published ports:$detail"; fi
}

check_redirect() {
  local out suffix=""
  [ "$HTTPS_PORT" = 443 ] || suffix=":$HTTPS_PORT"
  local want="301 https://$PUBLIC_HOST$suffix/users?limit=1"
  out=$(curl -s -m 10 -o /dev/null -w '%{http_code} %{redirect_url}' "$HTTP_URL/users?limit=1" || true)
  if [ "$out" = "$want" ]; then
    pass "http redirects to https: GET $HTTP_URL/users?limit=1 -> $out"
  else
    fail "http redirect: GET $HTTP_URL/users?limit=1 -> '$out', expected '$want'"
  fi
}

check_tls_headers() {
  local hsts
  hsts=$(curl -sk -m 10 -o /dev/null -D - "$HTTPS_URL/health" | tr -d '\r' |
    grep -i '^strict-transport-security:' || true)
  if [ -n "$hsts" ]; then pass "https answers with HSTS: $hsts"; else fail "no Strict-Transport-Security header on $HTTPS_URL/health"; fi
}

wait_ready() {
  local start=$SECONDS code
  while true; do
    code=$(curl -sk -m 5 -o /dev/null -w '%{http_code}' "$HTTPS_URL/ready" 2>/dev/null || true)
    if [ "$code" = 200 ]; then
      pass "API ready through nginx: GET $HTTPS_URL/ready -> 200 after $((SECONDS - start)) s"
      return 0
    fi
    if ((SECONDS - start >= WAIT_TIMEOUT)); then
      fail "API not ready through nginx after $WAIT_TIMEOUT s (last GET /ready -> $code)"
      return 1
    fi
    sleep 2
  done
}

json_field() {  # json_field NAME < body: the first string value of NAME
  sed -n "s/.*\"$1\" *: *\"\([^\"]*\)\".*/\1/p" | head -n 1
}

response_header() {  # response_header NAME: its value in the last api call's response
  tr -d '\r' <"$WORK/headers" | sed -n "s/^$1: *//Ip" | head -n 1
}

check_crud() {
  local tag email id out codes="" ok=1 code body etag
  tag=v$(date +%s)$RANDOM
  email="$tag@example.com"
  out=$(api POST /users "{\"name\": \"Verify $tag\", \"email\": \"$email\", \"username\": \"$tag\"}")
  code=${out%%$'\n'*}; body=${out#*$'\n'}
  id=$(json_field id <<<"$body")
  etag=$(response_header ETag)
  codes+="create $code"; [ "$code" = 201 ] && [ -n "$id" ] || ok=0

  out=$(api GET "/users/$id"); code=${out%%$'\n'*}; body=${out#*$'\n'}
  codes+=", read $code"; [ "$code" = 200 ] && grep -q "$email" <<<"$body" || ok=0

  out=$(api GET "/users?limit=5&offset=0"); code=${out%%$'\n'*}; body=${out#*$'\n'}
  codes+=", list $code"; [ "$code" = 200 ] && grep -q '"total"' <<<"$body" || ok=0

  out=$(api GET "/users/search?q=$tag"); code=${out%%$'\n'*}; body=${out#*$'\n'}
  codes+=", search $code"; [ "$code" = 200 ] && grep -q "$id" <<<"$body" || ok=0

  out=$(api PATCH "/users/$id" '{"name": "Verify Edited"}' "If-Match: $etag")
  code=${out%%$'\n'*}; body=${out#*$'\n'}
  codes+=", edit $code"; [ "$code" = 200 ] && grep -q 'Verify Edited' <<<"$body" || ok=0
  STALE_ETAGS="$etag -> $(response_header ETag)"

  # The ETag of the creation is stale now: the edit made from it is refused.
  out=$(api PATCH "/users/$id" '{"name": "Verify Stale"}' "If-Match: $etag")
  STALE_CODE=${out%%$'\n'*}; STALE_TITLE=$(json_field title <<<"${out#*$'\n'}")

  # A second user with the same email, before the first one is deleted.
  out=$(api POST /users "{\"name\": \"Dup $tag\", \"email\": \"$email\", \"username\": \"${tag}d\"}")
  DUP_CODE=${out%%$'\n'*}; DUP_TYPE=$(json_field title <<<"${out#*$'\n'}")

  out=$(api DELETE "/users/$id"); code=${out%%$'\n'*}
  codes+=", delete $code"; [ "$code" = 204 ] || ok=0

  out=$(api GET "/users/$id"); code=${out%%$'\n'*}
  codes+=", read-after-delete $code"; [ "$code" = 404 ] || ok=0

  if [ "$ok" = 1 ]; then
    pass "users CRUD over https through nginx: $codes"
  else
    fail "users CRUD over https through nginx: $codes"
  fi
  if [ "$etag" = '"1"' ] && [ "$STALE_CODE" = 412 ]; then
    pass "optimistic concurrency through nginx: ETag $STALE_ETAGS, PATCH with the stale If-Match -> 412 $STALE_TITLE"
  else
    fail "optimistic concurrency through nginx: ETag $STALE_ETAGS, stale If-Match -> $STALE_CODE, expected 412"
  fi
  if [ "$DUP_CODE" = 409 ]; then
    pass "duplicate email through the stack: POST /users -> 409 $DUP_TYPE"
  else
    fail "duplicate email through the stack: POST /users -> $DUP_CODE, expected 409"
  fi
}

# The interactive docs through the ingress, in the system's Chromium: a search run from the
# page's own controls finds a user just created, and the page asks nothing of another host.
check_browser() {
  local tag out code id rc=0
  tag=b$(date +%s)$RANDOM
  out=$(api POST /users "{\"name\": \"Browser $tag\", \"email\": \"$tag@example.com\", \"username\": \"$tag\"}")
  code=${out%%$'\n'*}; id=$(json_field id <<<"${out#*$'\n'}")
  if [ "$code" != 201 ] || [ -z "$id" ]; then
    fail "browser: could not create the user to search for (POST /users -> $code)"
    return
  fi
  if ! "$PYTHON" -c 'import playwright' 2>/dev/null; then
    fail "browser: $PYTHON has no Playwright (pip install -r requirements-browser.txt, or tox -e e2e)"
  else
    out=$("$PYTHON" "$STACK_DIR/browser_check.py" --insecure --query "$tag" --expect-id "$id" \
      "$HTTPS_URL" 2>&1) || rc=$?
    if [ "$rc" = 0 ]; then pass "browser: $out"; else fail "browser: $(tail -n 1 <<<"$out")"; fi
  fi
  api DELETE "/users/$id" >/dev/null
}

# A MongoDB "hello" (OP_MSG, {hello: 1, $db: "admin"}): a MongoDB server answers it with a
# document holding maxWireVersion, whatever else listens on an address never does.
MONGO_HELLO_HEX=340000000100000000000000dd07000000000000001f0000001068656c6c6f000100000002246462000600000061646d696e0000

# 24 PATCHes at once, all made from version 1 of one user, through nginx to both api replicas:
# MongoDB's compare-and-set lets exactly one through.
check_precondition_race() {
  local out id n ok=0 stale=0 other=0 code
  out=$(api POST /users "{\"name\": \"Race\", \"email\": \"race$RANDOM$(date +%s)@example.com\", \"username\": \"race$RANDOM\"}")
  id=$(json_field id <<<"${out#*$'\n'}")
  for n in $(seq 24); do
    curl -sk -m 20 -o /dev/null -w '%{http_code}' -X PATCH -H 'Content-Type: application/json' \
      -H 'If-Match: "1"' --data "{\"name\": \"Racer $n\"}" "$HTTPS_URL/users/$id" \
      >"$WORK/race.$n" 2>/dev/null &
  done
  wait
  for n in $(seq 24); do
    code=$(cat "$WORK/race.$n")
    case $code in 200) ok=$((ok + 1)) ;; 412) stale=$((stale + 1)) ;; *) other=$((other + 1)) ;; esac
  done
  api DELETE "/users/$id" >/dev/null
  if [ "$ok" = 1 ] && [ "$stale" = 23 ]; then
    pass "24 concurrent PATCHes with one If-Match: $ok x 200, $stale x 412"
  else
    fail "24 concurrent PATCHes with one If-Match: $ok x 200, $stale x 412, $other other"
  fi
}

check_ingress_isolated() {
  local cid api_cid mongo_cid mongo_ip api_ips name_rc=0 networks back_net=${STACK_NAME}_back
  cid=$(task_container "$WORKER1" ingress || true)
  api_cid=$(task_container "$WORKER2" api || true)
  mongo_cid=$(task_container "$MANAGER" mongo || true)
  if [ -z "$cid" ] || [ -z "$api_cid" ] || [ -z "$mongo_cid" ]; then
    fail "ingress isolation: containers not found (ingress '$cid', api '$api_cid', mongo '$mongo_cid')"
    fail "ingress isolation by address: not tested"
    return
  fi
  # 1. By name. Control: the same DNS server does answer for api.
  api_ips=$(docker exec "$WORKER1" docker exec "$cid" getent hosts api 2>/dev/null | awk '{print $1}' | xargs || true)
  docker exec "$WORKER1" docker exec "$cid" curl -s -m 3 -o /dev/null telnet://mongo:27017 </dev/null 2>/dev/null || name_rc=$?
  # curl exit 6: could not resolve host
  if [ -n "$api_ips" ] && [ "$name_rc" = 6 ]; then
    pass "ingress cannot resolve the database: in the ingress container 'mongo' does not resolve (curl exit 6) while 'api' does ($api_ips)"
  else
    fail "ingress name isolation: 'api' -> '${api_ips:-nothing}', 'mongo' -> curl exit $name_rc (6 expected)"
  fi
  # 2. By address: the ingress task is not on the back network, and a MongoDB hello sent to
  # mongo's address gets a MongoDB answer from the api container (control) but not from it.
  networks=$(docker exec "$WORKER1" docker inspect -f '{{range $n, $_ := .NetworkSettings.Networks}}{{$n}} {{end}}' "$cid" | xargs)
  mongo_ip=$(docker exec "$MANAGER" docker inspect -f "{{(index .NetworkSettings.Networks \"$back_net\").IPAddress}}" "$mongo_cid")
  local octal="" i from_api from_ingress
  for ((i = 0; i < ${#MONGO_HELLO_HEX}; i += 2)); do octal+=$(printf '\\%03o' "0x${MONGO_HELLO_HEX:i:2}"); done
  from_api=$(docker exec "$WORKER2" docker exec "$api_cid" python -c "
import socket
s = socket.create_connection(('$mongo_ip', 27017), timeout=3)
s.sendall(bytes.fromhex('$MONGO_HELLO_HEX'))
print(b'maxWireVersion' in s.recv(65536))" 2>/dev/null || true)
  from_ingress=$(docker exec "$WORKER1" docker exec "$cid" sh -c \
    "printf '$octal' | curl -s -m 3 telnet://$mongo_ip:27017" 2>/dev/null | grep -ac maxWireVersion || true)
  local ingress_answered=True detail
  [ "$from_ingress" != 0 ] || ingress_answered=False
  detail="ingress networks [$networks]; a MongoDB hello to mongo's $mongo_ip:27017 gets a MongoDB reply from the api container: $from_api, from the ingress container: $ingress_answered"
  if [[ " $networks " != *" $back_net "* ]] && [ "$from_api" = True ] && [ "$from_ingress" = 0 ]; then
    pass "ingress cannot reach the database by address: $detail"
  else
    fail "ingress address isolation: $detail"
  fi
}

check_mongo_auth() {
  local cid out rc=0
  cid=$(task_container "$MANAGER" mongo || true)
  [ -n "$cid" ] || { fail "no mongo container on $MANAGER"; return; }
  out=$(docker exec "$MANAGER" docker exec "$cid" mongosh --quiet --eval \
    'db.adminCommand({listDatabases: 1})' 2>&1) || rc=$?
  out=$(grep -Eim1 'requires authentication|unauthorized|code.{0,4}13' <<<"$out" | cut -c1-120 || true)
  if [ "$rc" != 0 ] && [ -n "$out" ]; then
    pass "MongoDB refuses unauthenticated commands: mongosh listDatabases -> exit $rc: $out"
  else
    fail "MongoDB answered an unauthenticated listDatabases (exit $rc)"
  fi
}

check_mongo_limits() {
  local spec cid real
  spec=$(docker exec "$MANAGER" docker service inspect -f \
    '{{with .Spec.TaskTemplate.Resources}}{{with .Limits}}{{.NanoCPUs}} {{.MemoryBytes}}{{end}}{{end}}' \
    "${STACK_NAME}_mongo" 2>/dev/null || true)
  cid=$(task_container "$MANAGER" mongo || true)
  real=$(docker exec "$MANAGER" docker inspect -f '{{.HostConfig.NanoCpus}} {{.HostConfig.Memory}}' \
    "$cid" 2>/dev/null || true)
  local cpus=${spec%% *} mem=${spec##* }
  if [ -n "$spec" ] && [ "${cpus:-0}" -gt 0 ] && [ "${mem:-0}" -gt 0 ] && [ "$real" = "$spec" ]; then
    pass "mongo resource limits: cpus $(awk -v n="$cpus" 'BEGIN {print n / 1e9}'), memory $((mem / 1048576)) MiB (service spec and running container agree)"
  else
    fail "mongo resource limits: service '$spec', container '$real'"
  fi
}

# service_log_line SERVICE TEXT: the first line of the service's logs (stdout: nginx's
# access log; stderr: the api's log) holding TEXT. Logs reach the manager a moment after
# the request: retry for up to 15 s.
service_log_line() {
  local service=$1 text=$2 line="" tries
  for ((tries = 0; tries < 15; tries++)); do
    line=$(docker exec "$MANAGER" docker service logs --raw --since 10m "${STACK_NAME}_$service" 2>&1 |
      grep -F -- "$text" | head -n 1 || true)
    [ -n "$line" ] && break
    sleep 1
  done
  printf '%s' "$line"
}

# returned_request_ids PATH ID: every X-Request-ID of the response to GET PATH sent with ID.
returned_request_ids() {
  curl -sk -m 10 -o /dev/null -D - -H "X-Request-ID: $2" "$HTTPS_URL$1" |
    tr -d '\r' | grep -i '^x-request-id:' | cut -d' ' -f2- | xargs || true
}

check_request_id() {
  local rid ids api_line ingress_line
  rid=verify-$(date +%s)-$RANDOM
  ids=$(returned_request_ids "/users?limit=1" "$rid")
  api_line=$(service_log_line api "\"request_id\": \"$rid\"")
  ingress_line=$(service_log_line ingress "\"request_id\":\"$rid\"")
  local detail="GET /users?limit=1 with X-Request-ID $rid -> X-Request-ID [$ids]"
  if [ "$ids" = "$rid" ] && [ -n "$api_line" ] && [ -n "$ingress_line" ]; then
    pass "request id end to end: $detail, exactly once; api log: $(cut -c1-220 <<<"$api_line"); ingress log: $(cut -c1-220 <<<"$ingress_line")"
  else
    fail "request id end to end: $detail; api log line: '${api_line:-none}'; ingress log line: '${ingress_line:-none}'"
  fi
}

check_request_id_replaced() {
  local ids
  ids=$(returned_request_ids /health 'not sane; <script>')
  if [[ "$ids" =~ ^[0-9a-f]{32}$ ]]; then
    pass "an insane X-Request-ID is replaced by nginx: 'not sane; <script>' -> X-Request-ID $ids"
  else
    fail "an insane X-Request-ID through nginx came back as [$ids], expected one new 32-hex id"
  fi
}

check_metrics_closed() {
  local out
  out=$(curl -sk -m 10 -o "$WORK/metrics" -w '%{http_code} %{content_type}' "$HTTPS_URL/metrics" || true)
  if [ "${out%% *}" = 404 ] && [ "${out#* }" = application/problem+json ] &&
    ! grep -q usersapi_http_requests "$WORK/metrics"; then
    pass "/metrics is closed at the ingress: GET $HTTPS_URL/metrics -> $out"
  else
    fail "/metrics through the ingress: GET $HTTPS_URL/metrics -> '$out', expected 404 application/problem+json"
  fi
}

check_metrics_in_task() {
  local cid out
  cid=$(task_container "$WORKER2" api || true)
  [ -n "$cid" ] || { fail "metrics inside an api task: no api container on $WORKER2"; return; }
  out=$(docker exec "$WORKER2" docker exec "$cid" python -c "
import urllib.request
with urllib.request.urlopen('http://127.0.0.1:8000/metrics', timeout=5) as r:
    print(r.status)
    print(r.read().decode())" 2>/dev/null || true)
  local sample
  sample=$(grep -m1 '^usersapi_http_requests_total{method="GET",route="/health"' <<<"$out" || true)
  if [ "$(head -n 1 <<<"$out")" = 200 ] && [ -n "$sample" ]; then
    pass "/metrics answers inside an api task ($cid on $WORKER2): 200, e.g. $sample"
  else
    fail "/metrics inside an api task: '$(head -n 3 <<<"$out" | xargs)'"
  fi
}

# What the API's own MongoDB credentials may do, tried from an api container with the
# settings and secret file it runs with. Prints "name: result" lines.
# API_CLIENT_PY: Python that connects "c" to MongoDB as the API does, from an api container's
# own settings and secret file; the checks below (and the drill's) go on from there.
API_CLIENT_PY='
import os
from pymongo import MongoClient
env = os.environ
with open(env["MONGO_PASSWORD_FILE"]) as f:
    pw = f.read().strip()
c = MongoClient(host=env["MONGO_HOST"], port=int(env["MONGO_PORT"]), username=env["MONGO_USER"],
                password=pw, authSource=env["MONGO_AUTH_SOURCE"], serverSelectionTimeoutMS=5000)
'
LEAST_PRIVILEGE_PY=$API_CLIENT_PY'
import time
from pymongo.errors import OperationFailure
db = c[env["MONGO_DB"]]
def refused(what, call):
    try:
        call()
    except OperationFailure as e:
        print(f"{what}: code {e.code}")
    else:
        print(f"{what}: allowed")
name = f"verify_{int(time.time())}"
coll = db[name]
try:
    i = coll.insert_one({"n": 1}).inserted_id
    coll.update_one({"_id": i}, {"$set": {"n": 2}})
    n = coll.find_one({"_id": i})["n"]
    coll.delete_one({"_id": i})
    print("crud:", "ok" if n == 2 and coll.count_documents({}) == 0 else "wrong")
    coll.create_index("n", unique=True)
    print("index: ok")
finally:
    db.drop_collection(name)
print("user:", env["MONGO_USER"], "on", env["MONGO_AUTH_SOURCE"])
print("databases:", ",".join(c.list_database_names()))
refused("createUser", lambda: db.command("createUser", "intruder", pwd="x", roles=[]))
refused("usersInfo", lambda: db.command("usersInfo", {"forAllDBs": True}))
refused("admin", lambda: c.admin["system.users"].find_one())
refused("otherdb", lambda: c["otherdb"]["t"].insert_one({"n": 1}))
'

check_least_privilege() {
  local api_cid secrets out
  secrets=$(docker exec "$MANAGER" docker service inspect -f \
    '{{range .Spec.TaskTemplate.ContainerSpec.Secrets}}{{.File.Name}} {{end}}' "${STACK_NAME}_api" 2>/dev/null | xargs)
  if [ -n "$secrets" ] && [[ " $secrets " != *" mongo_root_password "* ]]; then
    pass "the api service gets no MongoDB root password: its secrets are [$secrets]"
  else
    fail "api secrets: [$secrets] (mongo_root_password must not be among them)"
  fi
  api_cid=$(task_container "$WORKER2" api || true)
  [ -n "$api_cid" ] || { fail "least privilege: no api container on $WORKER2"; return; }
  out=$(docker exec "$WORKER2" docker exec "$api_cid" python -c "$LEAST_PRIVILEGE_PY" 2>&1 || true)
  local user dbs crud index
  user=$(sed -n 's/^user: //p' <<<"$out")
  crud=$(sed -n 's/^crud: //p' <<<"$out")
  index=$(sed -n 's/^index: //p' <<<"$out")
  dbs=$(sed -n 's/^databases: //p' <<<"$out")
  if [ "$crud" = ok ] && [ "$index" = ok ]; then
    pass "as the API's MongoDB user ($user): insert, update, find, delete and a unique index on a scratch collection of $MONGO_DB work"
  else
    fail "CRUD and index as the API's user: $(tr '\n' ' ' <<<"$out" | cut -c1-300)"
  fi
  if [ "$dbs" = "$MONGO_DB" ]; then
    pass "as the API's user, listDatabases shows only its database: [$dbs]"
  else
    fail "as the API's user, listDatabases shows [$dbs], expected [$MONGO_DB]"
  fi
  local what line
  for what in createUser usersInfo admin otherdb; do
    line=$(sed -n "s/^$what: //p" <<<"$out")
    local label
    case $what in
      createUser) label="user management (createUser on $MONGO_DB)" ;;
      usersInfo) label="reading users (usersInfo, all databases)" ;;
      admin) label="the admin database (find on admin.system.users)" ;;
      otherdb) label="another database (insert into otherdb.t)" ;;
    esac
    if [ "$line" = "code 13" ]; then
      pass "as the API's user, $label is refused: code 13 (Unauthorized)"
    else
      fail "as the API's user, $label: ${line:-no answer} (code 13 expected)"
    fi
  done
}

cmd_verify() {
  step "verify: the stack $STACK_NAME against its requirements (PASS/FAIL per line)"
  local node
  for node in "${NODES[@]}"; do require_node "$node"; done
  require_ingress_ports
  WORK=$(mktemp -d)
  trap 'rm -rf "$WORK"' EXIT
  wait_ready || true
  check_converged
  check_placement
  check_ports
  check_redirect
  check_tls_headers
  check_crud
  check_browser
  check_precondition_race
  check_ingress_isolated
  check_mongo_auth
  check_mongo_limits
  check_request_id
  check_request_id_replaced
  check_metrics_closed
  check_metrics_in_task
  check_least_privilege
  printf '\nverify: %d checks, %d failed\n' "$CHECKS" "$FAILED"
  [ "$FAILED" -eq 0 ]
}

