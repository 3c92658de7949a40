"""The nginx ingress (stack/nginx.conf) in the real nginx image, run as the stack runs it.

Each test starts the ingress service of stack/docker-stack.yml by hand: its image, the
template mounted where the stack mounts it, the stack's environment (its defaults unless a
test sets another), a self-signed certificate generated here as the two secrets, and the
stack's read-only root filesystem, tmpfs mounts, capabilities, resource limits and logging,
all read from the stack file. It runs on a Docker network of the test's own, where `api` is
ingress_stub.py in a Python container: it counts the requests it gets and can be told to
stall. The tests reach both through ports published on 127.0.0.1, so to nginx every request
comes from one client address.

Needs a Docker engine and the images the stack names (`tox -e ingress`). Everything is
named usersapi-ingress-test-<run>-... and removed at the end, whatever the outcome.
"""

from __future__ import annotations

import configparser
import http.client
import json
import math
import re
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from swarm_state import decode_capabilities as capability_names  # a /proc status mask

ROOT = Path(__file__).parent
TOX_INI = ROOT / "tox.ini"
STACK_FILE = ROOT / "stack" / "docker-stack.yml"
TEMPLATE = ROOT / "stack" / "nginx.conf"
STUB = ROOT / "ingress_stub.py"
STUB_IMAGE = "python:3.13-slim"
PREFIX = f"usersapi-ingress-test-{uuid.uuid4().hex[:8]}"

# nginx.conf gives slow clients 10 s and idle keep-alive connections 15 s; the tests assert
# bounds around those, never exact times. Without the rules nginx would wait 60 s (the
# image's nginx.conf: 65 s for keep-alive).
SLOW_CLIENT_CUT = (5.0, 15.0)
IDLE_KEEPALIVE_CUT = (10.0, 20.0)
KEEPALIVE_REQUESTS = 1000

# The headers every HTTPS answer carries exactly once, with the ingress's value.
SECURITY_HEADERS = {
    "Strict-Transport-Security": "max-age=31536000",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}
GENERATED_ID = re.compile(r"[0-9a-f]{32}")
PROBLEM_KEYS = {"type", "title", "status", "detail", "errors"}

# The test's client: the certificate is the self-signed one made here.
TLS = ssl.create_default_context()
TLS.check_hostname = False
TLS.verify_mode = ssl.CERT_NONE


# --- the stack file -------------------------------------------------------------------------

VARIABLE = re.compile(r"\$\{(?P<name>\w+)(?::-(?P<default>[^}]*))?\}")


def interpolate(value: str, settings: dict[str, str]) -> str:
    """A stack file value with ${NAME} and ${NAME:-default} filled in, as `docker stack
    deploy` does with the given settings as its environment."""

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group("name"), match.group("default")
        if name in settings:
            return settings[name]
        if default is None:
            raise KeyError(f"the stack file needs {name}")
        return default

    return VARIABLE.sub(substitute, value)


@dataclass(frozen=True)
class IngressService:
    """The ingress service of the stack file, as far as a container of it is concerned."""

    spec: dict[str, Any]

    @classmethod
    def load(cls) -> IngressService:
        stack = yaml.safe_load(STACK_FILE.read_text(encoding="utf-8"))
        return cls(stack["services"]["ingress"])

    @property
    def cap_add(self) -> list[str]:
        return [str(name) for name in self.spec.get("cap_add", [])]

    @property
    def limits(self) -> dict[str, Any]:
        return dict(self.spec["deploy"]["resources"]["limits"])

    def environment(self, settings: dict[str, str]) -> dict[str, str]:
        return {
            name: interpolate(str(value), settings)
            for name, value in self.spec["environment"].items()
        }

    def run_options(self, without_capability: str | None = None) -> list[str]:
        """docker run options for what the stack file sets besides the environment."""
        options = [
            "--mount",
            f"type=bind,source={TEMPLATE},target={self.spec['configs'][0]['target']},readonly",
        ]
        if self.spec.get("read_only"):
            options.append("--read-only")
        for volume in self.spec.get("volumes", []):
            assert volume["type"] == "tmpfs", f"the ingress mounts only tmpfs: {volume}"
            size = volume.get("tmpfs", {}).get("size")
            size_option = f",tmpfs-size={size}" if size else ""
            options += ["--mount", f"type=tmpfs,target={volume['target']}{size_option}"]
        options += [f"--cap-drop={name}" for name in self.spec.get("cap_drop", [])]
        options += [f"--cap-add={name}" for name in self.cap_add if name != without_capability]
        limits = self.limits
        options += [f"--cpus={limits['cpus']}", f"--memory={limits['memory']}"]
        if "pids" in limits:
            options.append(f"--pids-limit={limits['pids']}")
        logging = self.spec.get("logging", {})
        if logging:
            options.append(f"--log-driver={logging['driver']}")
            options += [f"--log-opt={k}={v}" for k, v in logging.get("options", {}).items()]
        return options

    def secret_target(self, source: str) -> str:
        for secret in self.spec["secrets"]:
            if secret["source"] == source:
                return f"/run/secrets/{secret['target']}"
        raise KeyError(source)

    @property
    def health_check(self) -> list[str]:
        test = [str(word) for word in self.spec["healthcheck"]["test"]]
        assert test[0] == "CMD", test
        return test[1:]


INGRESS = IngressService.load()


# --- Docker ---------------------------------------------------------------------------------


def docker(
    *args: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the docker CLI; with check, a failure fails the test with docker's own message."""
    done = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        pytest.fail(f"docker {' '.join(args)}: exit {done.returncode}: {done.stderr.strip()}")
    return done


def published_port(container: str, port: int) -> int:
    """The 127.0.0.1 port the container's port is published on."""
    out = docker("port", container, f"{port}/tcp").stdout
    return int(out.split()[0].rsplit(":", 1)[1])


def logs(container: str) -> str:
    """The container's stdout and stderr (nginx: access log and error log)."""
    done = docker("logs", container)
    return done.stdout + done.stderr


# --- HTTP -----------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def one(self, name: str) -> str:
        """The value of a header that must come exactly once."""
        values = self.headers.get_all(name) or []
        assert len(values) == 1, f"{name}: {values} in the {self.status} answer"
        return str(values[0])

    def problem(self) -> dict[str, Any]:
        """The body as a problem document in the API's shape."""
        assert self.one("Content-Type") == "application/problem+json"
        problem: dict[str, Any] = json.loads(self.body)
        assert set(problem) == PROBLEM_KEYS, problem
        assert problem["status"] == self.status
        assert problem["errors"] == []
        return problem


def connect(port: int, timeout: float = 10) -> http.client.HTTPSConnection:
    return http.client.HTTPSConnection("127.0.0.1", port, context=TLS, timeout=timeout)


def tls_socket(port: int, timeout: float = 10) -> ssl.SSLSocket:
    """A TLS connection with its handshake done, no request sent."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return TLS.wrap_socket(raw, server_hostname="localhost")


def ask(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> Answer:
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    return Answer(response.status, response.msg, response.read())


@dataclass
class Stub:
    """The stand-in api: its container and its control port."""

    name: str
    network: str
    control_port: int

    def control(self, method: str, path: str) -> dict[str, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.control_port, timeout=10)
        try:
            answer = ask(conn, method, path)
        finally:
            conn.close()
        assert answer.status == 200, answer
        state: dict[str, Any] = json.loads(answer.body)
        return state

    def state(self) -> dict[str, Any]:
        return self.control("GET", "/state")

    def requests(self) -> int:
        return int(self.state()["requests"])

    def release(self) -> None:
        self.control("POST", "/release")


@dataclass
class Ingress:
    """A running ingress container and what it was started with."""

    name: str
    environment: dict[str, str]
    http_port: int = 0
    https_port: int = 0
    connections: list[http.client.HTTPConnection] = field(default_factory=list)

    def setting(self, name: str) -> int:
        return int(self.environment[name])

    def connection(self, timeout: float = 10) -> http.client.HTTPSConnection:
        conn = connect(self.https_port, timeout)
        self.connections.append(conn)
        return conn

    def https(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> Answer:
        """One request on a connection of its own."""
        return ask(self.connection(), method, path, headers, body)

    def close(self) -> None:
        for conn in self.connections:
            conn.close()


def wait_until_serving(ingress: Ingress, deadline: float = 30) -> None:
    """Wait until an nginx worker completes a TLS handshake (no request: nothing counted or
    logged); fail with nginx's log if the container stops."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            tls_socket(ingress.https_port, timeout=2).close()
        except OSError:
            running = docker("inspect", "-f", "{{.State.Running}}", ingress.name).stdout
            if running.strip() != "true":
                pytest.fail(f"the ingress stopped:\n{logs(ingress.name)}")
            time.sleep(0.2)
        else:
            return
    pytest.fail(f"the ingress did not answer within {deadline} s:\n{logs(ingress.name)}")


# --- fixtures -------------------------------------------------------------------------------


def require_engine() -> None:
    done = subprocess.run(
        ["docker", "version", "--format", "{{.Server.Version}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"these tests need a Docker engine: {done.stderr.strip()}", pytrace=False)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A self-signed certificate and key for localhost, as the stack's two TLS secrets."""
    directory = tmp_path_factory.mktemp("tls")
    crt, key = directory / "tls.crt", directory / "tls.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(crt)],
        capture_output=True,
        check=True,
    )  # fmt: skip
    # The master reads the key as root without CAP_DAC_OVERRIDE: a bind-mounted file owned
    # by whoever runs the tests must be readable by all (a throwaway key; the stack's own
    # secret is root's alone, mode 0400).
    key.chmod(0o444)
    return {"tls_cert": crt, "tls_key": key}


@pytest.fixture(scope="module")
def network() -> Iterator[str]:
    """A Docker network of the test's own."""
    require_engine()
    name = f"{PREFIX}-net"
    docker("network", "create", name)
    try:
        yield name
    finally:
        docker("network", "rm", name, check=False)


@pytest.fixture(scope="module")
def stub(network: str) -> Iterator[Stub]:
    """The stub api on the network, as `api`."""
    name = f"{PREFIX}-api"
    docker(
        "run", "-d", "--name", name, "--network", network, "--network-alias", "api",
        "-p", "127.0.0.1::9000",
        "--mount", f"type=bind,source={STUB},target=/stub/ingress_stub.py,readonly",
        STUB_IMAGE, "python", "/stub/ingress_stub.py",
    )  # fmt: skip
    try:
        api = Stub(name, network, published_port(name, 9000))
        end = time.monotonic() + 30
        while True:
            try:
                api.state()
                break
            except OSError:
                if time.monotonic() > end:
                    pytest.fail(f"the stub api did not start:\n{logs(name)}")
                time.sleep(0.2)
        yield api
    finally:
        docker("rm", "-f", name, check=False)


@pytest.fixture
def api(stub: Stub) -> Stub:
    """The stub api, its counts at zero and stalled requests held again."""
    stub.control("POST", "/reset")
    return stub


StartIngress = Callable[..., Ingress]


@pytest.fixture
def start_ingress(stub: Stub, certificate: dict[str, Path]) -> Iterator[StartIngress]:
    """Start ingress containers as the stack would; all are removed after the test."""
    started: list[Ingress] = []

    def start(
        settings: dict[str, str] | None = None,
        without_capability: str | None = None,
        wait: bool = True,
    ) -> Ingress:
        name = f"{PREFIX}-ingress-{len(started)}-{uuid.uuid4().hex[:6]}"
        ingress = Ingress(name, INGRESS.environment(settings or {}))
        started.append(ingress)
        secrets = [
            f"--mount=type=bind,source={path},target={INGRESS.secret_target(source)},readonly"
            for source, path in certificate.items()
        ]
        env = [f"--env={variable}={value}" for variable, value in ingress.environment.items()]
        docker(
            "run", "-d", "--name", name, "--network", stub.network,
            "-p", "127.0.0.1::80", "-p", "127.0.0.1::443",
            *env, *secrets, *INGRESS.run_options(without_capability), INGRESS.spec["image"],
        )  # fmt: skip
        if wait:
            ingress.http_port = published_port(name, 80)
            ingress.https_port = published_port(name, 443)
            wait_until_serving(ingress)
        return ingress

    yield start
    for ingress in started:
        ingress.close()
        docker("rm", "-f", ingress.name, check=False)


@pytest.fixture
def ingress(start_ingress: StartIngress) -> Ingress:
    """An ingress with the stack's defaults."""
    return start_ingress()


# --- helpers --------------------------------------------------------------------------------


def exceed_rate_limit(ingress: Ingress) -> list[Answer]:
    """Requests on one keep-alive connection, as fast as it goes, until ten are refused."""
    conn = ingress.connection()
    answers: list[Answer] = []
    while sum(a.status == 429 for a in answers) < 10:
        answers.append(ask(conn, "GET", "/users"))
        assert len(answers) < 500, "no request was refused"
    return answers


@contextmanager
def requests_in_flight(
    ingress: Ingress, api: Stub, count: int, method: str = "GET"
) -> Iterator[list[Future[Answer]]]:
    """`count` concurrent requests, each on its own connection, held by the api until the
    block ends; yields their futures once the api holds all of them."""
    body = b'{"name": "Racer"}' if method != "GET" else None
    headers = {"Content-Type": "application/json", "If-Match": '"1"'} if body else {}
    with ThreadPoolExecutor(count) as pool:
        futures = [
            pool.submit(ask, ingress.connection(60), method, "/stall", headers, body)
            for _ in range(count)
        ]
        try:
            end = time.monotonic() + 30
            while api.state()["in_flight"] < count:
                done = [f.result().status for f in futures if f.done()]
                assert not done, f"answered before the api held {count}: {done}"
                assert time.monotonic() < end, f"the api holds {api.state()['in_flight']}"
                time.sleep(0.1)
            yield futures
        finally:
            api.release()


def seconds_until_closed(sock: socket.socket, limit: float) -> float:
    """How long the server keeps the connection open while the client waits."""
    sock.settimeout(limit)
    start = time.monotonic()
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        pytest.fail(f"the connection was still open after {limit} s")
    except (ssl.SSLError, ConnectionError):
        pass  # closed with a reset (reset_timedout_connection): closed all the same
    return time.monotonic() - start


def answer_of_the_api(ingress: Ingress) -> Answer:
    return ingress.https("GET", "/users?limit=1")


def retry_after_of_the_api(ingress: Ingress) -> Answer:
    return ingress.https("GET", "/busy")


def too_large(ingress: Ingress) -> Answer:
    return ingress.https("POST", "/users", {"Content-Type": "application/json"}, b"x" * (2 << 20))


def too_many(ingress: Ingress) -> Answer:
    return exceed_rate_limit(ingress)[-1]


def api_unreachable(ingress: Ingress) -> Answer:
    return ingress.https("GET", "/close")


def metrics(ingress: Ingress) -> Answer:
    return ingress.https("GET", "/metrics")


# Every kind of HTTPS answer: the API's, and nginx's own errors.
ANSWERS: dict[str, Callable[[Ingress], Answer]] = {
    "the api's answer": answer_of_the_api,
    "the api's 503 with its Retry-After": retry_after_of_the_api,
    "413 body too large": too_large,
    "429 rate limit": too_many,
    "503 api unreachable": api_unreachable,
    "404 /metrics": metrics,
}


# --- tests: redirect ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "location"),
    [
        ({}, "https://example.test/users?limit=1"),
        ({"HTTPS_PORT": "8443"}, "https://example.test:8443/users?limit=1"),
    ],
    ids=["default port", "custom port"],
)
def test_http_redirects_to_the_same_url_over_https(
    start_ingress: StartIngress, api: Stub, settings: dict[str, str], location: str
) -> None:
    ingress = start_ingress(settings)
    conn = http.client.HTTPConnection("127.0.0.1", ingress.http_port, timeout=10)
    try:
        answer = ask(conn, "GET", "/users?limit=1", {"Host": "example.test"})
    finally:
        conn.close()
    assert answer.status == 301
    assert answer.one("Location") == location
    assert GENERATED_ID.fullmatch(answer.one("X-Request-ID"))
    assert api.requests() == 0


# --- tests: headers and nginx's own answers -------------------------------------------------


@pytest.mark.parametrize("kind", ANSWERS)
def test_every_https_answer_carries_the_security_headers_once(ingress: Ingress, kind: str) -> None:
    answer = ANSWERS[kind](ingress)
    for name, value in SECURITY_HEADERS.items():
        assert answer.one(name) == value, name
    assert GENERATED_ID.fullmatch(answer.one("X-Request-ID"))


@pytest.mark.parametrize(
    ("kind", "title", "retry_after"),
    [
        ("413 body too large", "Content Too Large", None),
        ("429 rate limit", "Too Many Requests", "1"),
        ("503 api unreachable", "Service Unavailable", "5"),
        ("404 /metrics", "Not Found", None),
    ],
)
def test_nginx_own_errors_are_problem_documents(
    ingress: Ingress, kind: str, title: str, retry_after: str | None
) -> None:
    answer = ANSWERS[kind](ingress)
    assert answer.problem()["title"] == title
    assert answer.headers.get_all("Retry-After") == ([retry_after] if retry_after else None)


def test_the_api_own_retry_after_passes_alone(ingress: Ingress) -> None:
    answer = retry_after_of_the_api(ingress)
    assert answer.status == 503
    assert answer.one("Retry-After") == "7"


def test_a_body_over_1_mib_never_reaches_the_api(ingress: Ingress, api: Stub) -> None:
    assert too_large(ingress).status == 413
    assert ingress.https("POST", "/users", body=b"x" * (1 << 20)).status == 200
    assert api.requests() == 1


@pytest.mark.parametrize("path", ["/metrics", "/%6Detrics", "//metrics"])
def test_metrics_is_refused_at_the_ingress(ingress: Ingress, api: Stub, path: str) -> None:
    answer = ingress.https("GET", path)
    assert answer.status == 404
    assert answer.problem()["title"] == "Not Found"
    assert api.requests() == 0


# --- tests: limits --------------------------------------------------------------------------


def test_a_burst_beyond_the_rate_limit_gets_429_and_never_reaches_the_api(
    ingress: Ingress, api: Stub
) -> None:
    rate, burst = ingress.setting("RATE_LIMIT"), ingress.setting("RATE_BURST")
    start = time.monotonic()
    answers = exceed_rate_limit(ingress)
    elapsed = time.monotonic() - start
    statuses = [a.status for a in answers]
    passed = statuses.count(200)
    assert set(statuses) == {200, 429}
    assert api.requests() == passed
    # The first request and the burst pass at once, then RATE_LIMIT a second.
    assert burst + 1 <= passed <= burst + 1 + math.ceil(rate * elapsed) + 1
    refused = answers[-1]
    assert refused.problem()["title"] == "Too Many Requests"
    time.sleep(int(refused.one("Retry-After")))
    assert ingress.https("GET", "/users").status == 200
    assert api.requests() == passed + 1


def test_requests_in_flight_beyond_the_connection_limit_get_429(
    ingress: Ingress, api: Stub
) -> None:
    limit = ingress.setting("CONN_LIMIT")
    with requests_in_flight(ingress, api, limit) as held:
        refused = ingress.https("GET", "/stall")
        assert refused.status == 429
        assert refused.problem()["title"] == "Too Many Requests"
        assert refused.one("Retry-After") == "1"
        assert api.requests() == limit
    assert [f.result().status for f in held] == [200] * limit


def test_24_concurrent_patches_from_one_address_pass_unthrottled(
    ingress: Ingress, api: Stub
) -> None:
    # verify's race: 24 PATCHes at once through the ingress, all of them must reach the API.
    with requests_in_flight(ingress, api, 24, "PATCH") as held:
        assert api.state()["in_flight"] == 24
    assert [f.result().status for f in held] == [200] * 24


# --- tests: slow clients --------------------------------------------------------------------


@pytest.mark.parametrize("sends", ["nothing, not even a TLS handshake", "half a header"])
def test_a_client_that_stalls_before_its_request_is_complete_is_cut_off(
    ingress: Ingress, api: Stub, sends: str
) -> None:
    if sends == "half a header":
        sock: socket.socket = tls_socket(ingress.https_port)
        sock.sendall(b"GET /users HTTP/1.1\r\nHost: localhost\r\n")
    else:
        sock = socket.create_connection(("127.0.0.1", ingress.https_port), timeout=10)
    with sock:
        elapsed = seconds_until_closed(sock, 60)
    low, high = SLOW_CLIENT_CUT
    assert low <= elapsed <= high
    assert api.requests() == 0


def test_a_client_that_stalls_in_its_body_is_cut_off(ingress: Ingress, api: Stub) -> None:
    with tls_socket(ingress.https_port) as sock:
        sock.sendall(b"POST /users HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\n{")
        elapsed = seconds_until_closed(sock, 60)
    low, high = SLOW_CLIENT_CUT
    assert low <= elapsed <= high
    assert api.requests() == 0  # nginx buffers the whole body before it asks the api


def test_a_client_that_does_not_read_its_answer_is_cut_off(ingress: Ingress) -> None:
    size = 64 << 20  # more than every buffer on the way (sockets, nginx's, the tmpfs share)
    conn = ingress.connection(timeout=60)
    conn.request("GET", f"/big?bytes={size}")
    response = conn.getresponse()
    assert response.status == 200
    time.sleep(SLOW_CLIENT_CUT[1] + 1)  # read nothing for longer than nginx waits
    received = 0
    try:
        while chunk := response.read(1 << 20):
            received += len(chunk)
    except (http.client.IncompleteRead, ssl.SSLError, ConnectionError):
        pass
    assert received < size


def test_an_idle_keep_alive_connection_is_closed(ingress: Ingress) -> None:
    conn = ingress.connection()
    assert ask(conn, "GET", "/users").status == 200
    assert conn.sock is not None
    low, high = IDLE_KEEPALIVE_CUT
    assert low <= seconds_until_closed(conn.sock, 60) <= high


def test_a_keep_alive_connection_serves_a_bounded_number_of_requests(ingress: Ingress) -> None:
    conn = ingress.connection()
    answers = [ask(conn, "GET", "/metrics") for _ in range(KEEPALIVE_REQUESTS)]
    assert [a.status for a in answers] == [404] * KEEPALIVE_REQUESTS
    assert [a.headers.get("Connection") for a in answers[-2:]] == ["keep-alive", "close"]


# --- tests: request ids and the access log --------------------------------------------------


def test_a_sane_request_id_reaches_the_api_and_comes_back_once(ingress: Ingress, api: Stub) -> None:
    answer = ingress.https("GET", "/users", {"X-Request-ID": "support-4711"})
    assert answer.one("X-Request-ID") == "support-4711"  # the api's own is hidden
    assert api.state()["headers"]["X-Request-ID"] == "support-4711"


def test_an_insane_request_id_is_replaced(ingress: Ingress, api: Stub) -> None:
    answer = ingress.https("GET", "/users", {"X-Request-ID": "not sane; <script>"})
    request_id = answer.one("X-Request-ID")
    assert GENERATED_ID.fullmatch(request_id)
    assert api.state()["headers"]["X-Request-ID"] == request_id


def test_the_access_log_keeps_the_path_but_no_query_value(ingress: Ingress) -> None:
    term, request_id = f"personal-{uuid.uuid4().hex}", f"log-{uuid.uuid4().hex}"
    answer = ingress.https("GET", f"/users/search?q={term}&limit=5", {"X-Request-ID": request_id})
    assert answer.status == 200
    text = logs(ingress.name)
    assert term not in text
    lines = [json.loads(line) for line in text.splitlines() if f'"{request_id}"' in line]
    assert [(line["path"], line["status"]) for line in lines] == [("/users/search", 200)]


# --- tests: the container -------------------------------------------------------------------


def test_nginx_runs_locked_down_as_the_stack_says(ingress: Ingress) -> None:
    probe = docker("exec", ingress.name, "touch", "/etc/nginx/probe", check=False)
    assert probe.returncode != 0
    assert "Read-only file system" in probe.stderr
    # grep may miss a process that ends meanwhile (its own shell): exit status not checked.
    statuses = docker(
        "exec", ingress.name, "sh", "-c", "grep -H -E '^(Name|Uid|CapEff):' /proc/[0-9]*/status",
        check=False,
    ).stdout  # fmt: skip
    processes: dict[str, dict[str, str]] = {}
    for line in statuses.splitlines():
        path, key, value = line.split(":", 2)
        processes.setdefault(path, {})[key] = value.split()[0]
    nginx = {path: fields for path, fields in processes.items() if fields["Name"] == "nginx"}
    master = nginx.pop("/proc/1/status")
    assert master["Uid"] == "0"
    assert capability_names(master["CapEff"]) == set(INGRESS.cap_add)
    assert nginx, "no worker process"
    for worker in nginx.values():
        assert (worker["Uid"], capability_names(worker["CapEff"])) == ("101", set())
    pids_max = docker(
        "exec", ingress.name, "sh", "-c",
        "cat /sys/fs/cgroup/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids/pids.max",
    ).stdout  # fmt: skip
    assert pids_max.strip() == str(INGRESS.limits["pids"])
    docker("exec", ingress.name, *INGRESS.health_check)


@pytest.mark.parametrize("capability", INGRESS.cap_add)
def test_nginx_needs_each_capability_the_stack_adds(
    start_ingress: StartIngress, capability: str
) -> None:
    ingress = start_ingress(without_capability=capability, wait=False)
    end = time.monotonic() + 20
    while "failed (1: Operation not permitted)" not in logs(ingress.name):
        assert time.monotonic() < end, f"nginx ran without {capability}:\n{logs(ingress.name)}"
        time.sleep(0.2)
    running = docker("inspect", "-f", "{{.State.Running}}", ingress.name).stdout.strip()
    if running == "true":  # the master may live on, but no worker serves
        with pytest.raises((OSError, http.client.HTTPException)):
            ask(connect(published_port(ingress.name, 443), timeout=3), "GET", "/metrics")


def test_the_image_renders_the_template_as_envsubst_does(ingress: Ingress) -> None:
    # tox -e lint renders stack/nginx.conf with gettext's envsubst for gixy: the same result
    # as the image's entrypoint, which ran in this container.
    rendered = docker("exec", ingress.name, "cat", "/etc/nginx/conf.d/default.conf").stdout
    config_env = json.loads(docker("inspect", "-f", "{{json .Config.Env}}", ingress.name).stdout)
    env = dict(entry.split("=", 1) for entry in config_env)
    shell_format = " ".join(f"${name}" for name in env)
    by_envsubst = subprocess.run(
        ["envsubst", shell_format],
        input=TEMPLATE.read_text(encoding="utf-8"),
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert rendered == by_envsubst
    for name in ingress.environment:
        assert f"${{{name}}}" not in rendered


def test_the_lint_renders_the_template_with_the_stack_defaults() -> None:
    tox = configparser.ConfigParser(interpolation=None)
    tox.read(TOX_INI, encoding="utf-8")
    lines = tox["testenv:lint"]["set_env"].splitlines()
    lint_values = dict(line.replace(" ", "").split("=", 1) for line in lines if "=" in line)
    for name, value in INGRESS.environment({}).items():
        assert lint_values.get(name) == value, name
