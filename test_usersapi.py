"""Tests of the users API through Flask's test client, over an in-memory MongoDB (mongomock).

mongomock proves the API's logic and its use of pymongo, not MongoDB's own behaviour; the
end-to-end run (tox -e e2e) exercises the same code against a MongoDB server in a swarm.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import os
import re
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bson
import pytest
import schemathesis
import werkzeug.http
from flask import Flask, request
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from pymongo.errors import ConnectionFailure, OperationFailure
from werkzeug.test import TestResponse

import usersapi
import usersapi_keys
import usersapi_telemetry as telemetry
from usersapi import Settings, UserStore, create_app
from usersapi_settings import ConfigError

Json = Any


# --------------------------------------------------------------------------------------
# Fixtures and helpers
# --------------------------------------------------------------------------------------


# The tests' API keys: one that may write, one that may only read.
WRITE_KEY, READ_KEY = usersapi_keys.new_key(), usersapi_keys.new_key()
KEY_LINES = "\n".join(
    [
        usersapi_keys.key_line("writer", "write", WRITE_KEY),
        usersapi_keys.key_line("reader", "read", READ_KEY),
    ]
)
TEST_KEYS = usersapi_keys.parse_keys(KEY_LINES)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def in_memory(**overrides: Any) -> Settings:
    return Settings(mongo_uri=usersapi.IN_MEMORY_URI, api_keys=TEST_KEYS, **overrides)


def keyed(app: Flask, key: str = WRITE_KEY) -> FlaskClient:
    """A client of APP that sends KEY with every request."""
    http = app.test_client()
    http.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {key}"
    return http


@pytest.fixture
def app() -> Flask:
    return create_app(in_memory(max_batch=1000))


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A client with the write key."""
    return keyed(app)


@pytest.fixture
def anonymous(app: Flask) -> FlaskClient:
    """A client that sends no key."""
    return app.test_client()


def store_of(app: Flask) -> UserStore:
    store: UserStore = app.extensions["usersapi.store"]
    return store


def a_user(n: int, **fields: Json) -> dict[str, Json]:
    return {"name": f"User {n}", "email": f"user{n}@example.com", "username": f"user{n}", **fields}


def json_of(response: TestResponse) -> Json:
    assert response.json is not None, response.get_data(as_text=True)
    return response.json


def create(client: FlaskClient, body: Json) -> Json:
    response = client.post("/users", json=body)
    assert response.status_code == 201, response.json
    return response.json


def page(client: FlaskClient, query: str = "") -> Json:
    response = client.get(f"/users{query}")
    assert response.status_code == 200, response.json
    return response.json


def listed(client: FlaskClient, query: str = "") -> list[Json]:
    items: list[Json] = page(client, query)["items"]
    return items


def user_count(client: FlaskClient) -> int:
    total: int = page(client)["total"]
    return total


def assert_problem(response: TestResponse, status: int) -> list[Json]:
    """The response is a problem document with STATUS; its error items are returned."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body = response.json
    assert body is not None
    assert set(body) == {"type", "title", "status", "detail", "errors"}
    assert body["status"] == status
    errors: list[Json] = body["errors"]
    for error in errors:
        assert set(error) == {"index", "field", "message"}
    return errors


def fields_in(errors: list[Json]) -> set[tuple[int | None, str | None]]:
    return {(error["index"], error["field"]) for error in errors}


# One request of each kind that reaches the users' data (the ids name nobody).
DATA_REQUESTS: list[tuple[str, str, Json]] = [
    ("GET", "/users", None),
    ("GET", "/users/search?q=a", None),
    ("GET", "/users/0123456789abcdef01234567", None),
    ("POST", "/users", a_user(2)),
    ("PATCH", "/users", {"id": "0123456789abcdef01234567", "name": "x"}),
    ("DELETE", "/users/0123456789abcdef01234567", None),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------


def test_settings_build_the_uri_from_host_and_port() -> None:
    settings = Settings.from_env({"MONGO_HOST": "db", "MONGO_PORT": "27018", "MONGO_USER": "app"})
    assert settings.mongo_uri == "mongodb://db:27018/"
    assert settings.mongo_user == "app"
    assert settings.mongo_auth_source == "admin"
    assert settings.mongo_db == "usersdb"
    assert settings.max_batch == 1000
    assert settings.max_content_length == 1024 * 1024


def test_settings_defaults_to_localhost_when_only_credentials_are_given() -> None:
    settings = Settings.from_env({"MONGO_USER": "app", "MONGO_PASSWORD": "pw"})
    assert settings.mongo_uri == "mongodb://localhost:27017/"


def test_mongo_uri_wins_over_host_settings() -> None:
    env = {"MONGO_URI": "mongodb://a:1/", "MONGO_HOST": "b", "MONGO_DB": "other"}
    settings = Settings.from_env(env)
    assert settings.mongo_uri == "mongodb://a:1/"
    assert settings.mongo_db == "other"


def test_file_variants_are_read_once_without_trailing_newline(tmp_path: Path) -> None:
    (tmp_path / "password").write_text("s3cret pass\n", encoding="utf-8")
    (tmp_path / "uri").write_text("mongodb://u:p@db:27017/\n", encoding="utf-8")
    (tmp_path / "user").write_text("app\n", encoding="utf-8")
    settings = Settings.from_env(
        {
            "MONGO_PASSWORD_FILE": str(tmp_path / "password"),
            "MONGO_URI_FILE": str(tmp_path / "uri"),
            "MONGO_USER_FILE": str(tmp_path / "user"),
        }
    )
    assert settings.mongo_password == "s3cret pass"
    assert settings.mongo_uri == "mongodb://u:p@db:27017/"
    assert settings.mongo_user == "app"


def test_a_setting_and_its_file_variant_together_are_refused(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("x", encoding="utf-8")
    env = {"MONGO_PASSWORD": "x", "MONGO_PASSWORD_FILE": str(tmp_path / "pw")}
    with pytest.raises(ConfigError, match="not both"):
        Settings.from_env(env)


def test_an_unreadable_secret_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="MONGO_PASSWORD_FILE: cannot read"):
        Settings.from_env({"MONGO_PASSWORD_FILE": str(tmp_path / "missing")})


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MONGO_HOST": "db", "MONGO_PORT": "http"}, "MONGO_PORT must be a whole number"),
        ({"MONGO_HOST": "db", "MAX_BATCH": "0"}, "MAX_BATCH must be at least 1"),
        ({"MONGO_URI": "http://db"}, "MONGO_URI must start with"),
    ],
)
def test_bad_settings_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_the_factory_refuses_to_start_without_mongo_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in list(os.environ):
        if name.startswith("MONGO_"):
            monkeypatch.delenv(name)
    with pytest.raises(ConfigError, match="no MongoDB configuration"):
        create_app()


def test_the_factory_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MONGO_URI", "mongomock://")
    monkeypatch.setenv("MAX_BATCH", "7")
    app = create_app()
    assert app.extensions["usersapi.settings"].max_batch == 7
    assert app.test_client().get("/ready").status_code == 200


def test_passwords_stay_out_of_logs_and_reprs(caplog: pytest.LogCaptureFixture) -> None:
    secret = "hunter2-Secret"
    env = {"MONGO_URI": f"mongodb://app:{secret}@db:1/", "API_KEYS": KEY_LINES}
    settings = Settings.from_env(env)
    with caplog.at_level("INFO", logger="usersapi"):
        create_app(settings)
    assert "usersapi ready" in caplog.text
    assert "app:***@db:1" in caplog.text
    assert secret not in caplog.text
    assert secret not in repr(settings)
    other = Settings.from_env({"MONGO_HOST": "db", "MONGO_PASSWORD": secret})
    assert secret not in repr(other)
    assert secret not in other.describe()


def test_the_client_gets_the_credentials_source_and_pool_size() -> None:
    settings = Settings(
        mongo_uri="mongodb://db.invalid:27017/",
        mongo_user="app",
        mongo_password="pw",
        mongo_auth_source="usersdb",
        mongo_pool_size=7,
        mongo_timeout_ms=1234,
        api_keys=TEST_KEYS,
    )
    client = usersapi.make_client(settings)
    try:
        options = client.options
        credentials = options.pool_options._credentials
        assert credentials is not None
        assert (credentials.username, credentials.source) == ("app", "usersdb")
        assert options.pool_options.max_pool_size == 7
        assert options.pool_options.max_idle_time_seconds == 300
        assert options.pool_options.metadata["application"] == {"name": "usersapi"}
        assert options.codec_options.tz_aware is True
        assert options.pool_options.connect_timeout == 1.234
        assert options.server_selection_timeout == 1.234
    finally:
        client.close()


def test_the_email_index_is_made_again_after_a_failure(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    collection_class = type(store_of(app).client()["usersdb"]["users"])
    real = collection_class.create_index
    failures = iter([ConnectionFailure("MongoDB went away")])

    def fails_once(self: Any, *args: Any, **kwargs: Any) -> Any:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return real(self, *args, **kwargs)

    monkeypatch.setattr(collection_class, "create_index", fails_once)
    assert_problem(client.get("/users"), 503)  # the index could not be made: not remembered
    assert client.get("/users").status_code == 200
    index = store_of(app).client()["usersdb"]["users"].index_information()["email_unique"]
    assert index["unique"] is True


def test_the_settings_describe_themselves_in_one_line_without_secrets() -> None:
    env = {"MONGO_URI": "mongodb://app:pw@db:1/", "MONGO_USER": "app", "API_KEYS": KEY_LINES}
    assert Settings.from_env(env).describe() == (
        "MongoDB mongodb://app:***@db:1/ as app, database usersdb; 2 API keys (writer, reader)"
    )
    memory = Settings.from_env({"MONGO_URI": "mongomock://"}).describe()
    assert memory == "MongoDB in-memory store (mongomock), database usersdb; 0 API keys ()"


def test_the_in_memory_uri_needs_no_server() -> None:
    settings = Settings.from_env({"MONGO_URI": "mongomock://"})
    assert settings.in_memory
    assert "in-memory" in settings.describe()


def test_the_in_memory_store_needs_mongomock_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(usersapi, "find_spec", lambda _name: None)
    with pytest.raises(ConfigError, match="needs the mongomock package"):
        Settings.from_env({"MONGO_URI": "mongomock://"})


def run_devserver(cwd: Path) -> tuple[str, str]:
    """Start devserver.py in CWD with no MongoDB setting and no key; the key it printed and
    the rest of what it wrote, once the key was used to list the users."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MONGO_", "API_KEYS"))}
    env["PORT"] = str(port)
    log = cwd / "devserver.log"
    with log.open("w") as stderr:
        server = subprocess.Popen(  # noqa: S603 - this interpreter and a file of the project
            [sys.executable, str(HERE / "devserver.py")], env=env, stderr=stderr, cwd=cwd
        )
    try:
        deadline = time.monotonic() + 60
        while "API key (write)" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        key = re.search(r"API key \(write\), also in \.usersapi-dev-key: (\S+)", log.read_text())
        assert key is not None, log.read_text()
        url = f"http://127.0.0.1:{port}/users"
        while True:
            try:
                request = urllib.request.Request(url, headers=bearer(key[1]))
                with urllib.request.urlopen(request, timeout=2) as answer:  # noqa: S310
                    assert json.loads(answer.read())["total"] == 0
                break
            except OSError:  # not listening yet
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
    finally:
        server.terminate()
        server.wait(timeout=10)
    return key[1], log.read_text()


@pytest.mark.process
def test_the_dev_server_falls_back_to_memory_and_a_key_of_its_own(tmp_path: Path) -> None:
    key, stderr = run_devserver(tmp_path)
    assert "IN-MEMORY store" in stderr
    assert stderr.count(key) == 1  # printed once, and in no log line
    kept = tmp_path / ".usersapi-dev-key"
    assert kept.read_text(encoding="utf-8") == key + "\n"
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert re.fullmatch(r"usersapi_[A-Za-z0-9_-]{43}", key)
    assert run_devserver(tmp_path)[0] == key  # the next start keeps it


# --------------------------------------------------------------------------------------
# Access control: API keys
# --------------------------------------------------------------------------------------

USERS_ROUTES = [
    ("GET", "/users"),
    ("GET", "/users/search?q=a"),
    ("GET", "/users/0123456789abcdef01234567"),
    ("HEAD", "/users"),
    ("POST", "/users"),
    ("PATCH", "/users"),
    ("PATCH", "/users/0123456789abcdef01234567"),
    ("DELETE", "/users/0123456789abcdef01234567"),
]
WRITES = [(method, path) for method, path in USERS_ROUTES if method not in ("GET", "HEAD")]
REALM = 'Bearer realm="usersapi"'


def refused(response: TestResponse, status: int, challenge: str) -> None:
    assert response.headers["WWW-Authenticate"] == challenge
    if response.request.method != "HEAD":
        assert_problem(response, status)
    assert response.status_code == status


@pytest.mark.parametrize(("method", "path"), USERS_ROUTES)
def test_every_users_route_needs_a_key(anonymous: FlaskClient, method: str, path: str) -> None:
    response = anonymous.open(path, method=method, json=a_user(1))
    refused(response, 401, REALM)


@pytest.mark.parametrize(
    "authorization",
    [
        "Basic dXNlcjpwYXNz",  # another scheme: no key was presented (RFC 6750: no error code)
        "usersapi_abc",  # a key without the scheme
        "",
    ],
)
def test_no_key_or_another_scheme_is_401_without_an_error_code(
    anonymous: FlaskClient, authorization: str
) -> None:
    refused(anonymous.get("/users", headers={"Authorization": authorization}), 401, REALM)


@pytest.mark.parametrize(
    "authorization",
    [
        f"Bearer {WRITE_KEY}x",  # one character more
        f"Bearer {WRITE_KEY[:-1]}",  # one character less: a right prefix is not enough
        f"Bearer {usersapi_keys.new_key()}",  # well formed, but nobody's
        "Bearer",  # the scheme without a token
        "Bearer two words",
        "Bearer (not-a-token)",
        f"Bearer {'a' * 600}",
        f"Bearer {usersapi_keys.digest_of(WRITE_KEY).hex()}",  # the digest is not the key
    ],
)
def test_a_malformed_or_unknown_key_is_401_invalid_token(
    anonymous: FlaskClient, authorization: str
) -> None:
    response = anonymous.get("/users", headers={"Authorization": authorization})
    refused(response, 401, f'{REALM}, error="invalid_token"')
    assert json_of(response)["detail"] == "the API key is not valid"


def test_the_scheme_is_case_insensitive(anonymous: FlaskClient) -> None:
    assert (
        anonymous.get("/users", headers={"Authorization": f"bearer {READ_KEY}"}).status_code == 200
    )


@pytest.mark.parametrize(("method", "path"), USERS_ROUTES)
def test_a_read_key_reads_and_cannot_write(app: Flask, method: str, path: str) -> None:
    response = keyed(app, READ_KEY).open(path, method=method, json=a_user(1))
    if (method, path) in WRITES:
        challenge = f'{REALM}, error="insufficient_scope", scope="write"'
        refused(response, 403, challenge)
        assert "may only read" in json_of(response)["detail"]
    else:
        assert response.status_code in (200, 404)  # the id names nobody
        assert "WWW-Authenticate" not in response.headers
    assert store_of(app).users().count_documents({}) == 0


@pytest.mark.parametrize(("method", "path"), WRITES)
def test_the_key_is_checked_before_the_body(
    anonymous: FlaskClient, app: Flask, method: str, path: str
) -> None:
    for body in ("{not json", "[]", '{"name": 1}'):
        response = anonymous.open(path, method=method, data=body, content_type="application/json")
        refused(response, 401, REALM)  # not 400 or 422: nothing is read for a stranger
        response = keyed(app, READ_KEY).open(
            path, method=method, data=body, content_type="application/json"
        )
        assert response.status_code == 403


def test_the_key_is_checked_before_mongodb_is_asked_anything(
    app: Flask, anonymous: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_database(_self: UserStore) -> None:
        raise AssertionError("MongoDB was asked")

    monkeypatch.setattr(UserStore, "client", no_database)
    for method, path in USERS_ROUTES:
        assert anonymous.open(path, method=method, json=a_user(1)).status_code == 401
    for method, path in WRITES:
        assert keyed(app, READ_KEY).open(path, method=method, json=a_user(1)).status_code == 403


def test_every_configured_digest_is_compared_whichever_key_matches(
    anonymous: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[bytes] = []
    real = hmac.compare_digest

    def counted(a: bytes, b: bytes) -> bool:
        compared.append(b)
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counted)
    for key in (WRITE_KEY, READ_KEY, WRITE_KEY[:-1], usersapi_keys.new_key()):
        compared.clear()
        anonymous.get("/users", headers=bearer(key))
        assert compared == [key.digest for key in TEST_KEYS]  # all of them, in constant time


def test_open_routes_need_no_key(anonymous: FlaskClient) -> None:
    for path in ("/health", "/ready", "/openapi.json", "/docs", "/docs/swagger-ui.css"):
        assert anonymous.get(path).status_code == 200, path
    assert anonymous.get("/").status_code == 302
    assert anonymous.get("/metrics").status_code == 200


def test_refusals_are_logged_at_warning_and_counted_by_reason(
    app: Flask, anonymous: FlaskClient, json_logs: Callable[[], list[Json]]
) -> None:
    anonymous.get("/users")
    anonymous.get("/users", headers=bearer(WRITE_KEY + "x"))
    keyed(app, READ_KEY).delete("/users/0123456789abcdef01234567")
    lines = json_logs()
    warnings = [line["message"] for line in lines if line["level"] == "WARNING"]
    assert warnings == [
        "refused GET /users: missing key",
        "refused GET /users: invalid key",
        "refused DELETE /users/0123456789abcdef01234567: insufficient scope key",
    ]
    assert [line["key"] for line in access_lines(lines)] == [None, None, "reader"]
    text = anonymous.get("/metrics").get_data(as_text=True)
    for reason in ("missing", "invalid", "insufficient_scope"):
        assert metric(text, "usersapi_auth_refusals_total", reason=reason) == 1


def test_users_answers_are_never_cached_and_no_answer_is_sniffed(
    client: FlaskClient, anonymous: FlaskClient
) -> None:
    created = client.post("/users", json=a_user(1))
    for response in (created, client.get("/users"), anonymous.get("/users")):
        assert response.headers["Cache-Control"] == "no-store"
    for response in (created, anonymous.get("/health"), anonymous.get("/nowhere")):
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "Cache-Control" not in anonymous.get("/health").headers


def test_openapi_declares_the_bearer_scheme_and_each_operations_scope(
    anonymous: FlaskClient,
) -> None:
    doc = json_of(anonymous.get("/openapi.json"))
    assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if not path.startswith("/users"):
                assert "security" not in operation, (method, path)
                continue
            scope = "read" if method == "get" else "write"
            assert operation["security"] == [{"bearerAuth": [scope]}], (method, path)
            assert {"401", "403"} <= set(operation["responses"]), (method, path)


def test_openapi_refusal_examples_are_what_the_api_answers(
    app: Flask, anonymous: FlaskClient
) -> None:
    doc = json_of(anonymous.get("/openapi.json"))
    responses = doc["paths"]["/users"]["post"]["responses"]
    unauthorized = examples_of(responses["401"]["content"]["application/problem+json"])
    forbidden = examples_of(responses["403"]["content"]["application/problem+json"])
    assert anonymous.post("/users", json=a_user(1)).json == unauthorized["missing"]
    assert (
        anonymous.post("/users", json=a_user(1), headers=bearer("x")).json
        == (unauthorized["invalid"])
    )
    assert keyed(app, READ_KEY).post("/users", json=a_user(1)).json == forbidden["read"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("admin write", "line 1: expected NAME SCOPE sha256:HEX, found 2 fields"),
        ("# keys\n\nad min write sha256:" + "0" * 64, "line 3: expected NAME SCOPE sha256:HEX"),
        ("a/b read sha256:" + "0" * 64, "line 1: the name must be 1 to 64 letters"),
        ("x" * 65 + " read sha256:" + "0" * 64, "line 1: the name must be 1 to 64"),
        ("admin admin sha256:" + "0" * 64, "line 1: key admin: the scope must be read or write"),
        ("admin write sha256:" + "0" * 63, "line 1: key admin: the third field must be sha256:"),
        ("admin write sha256:" + "A" * 64, "line 1: key admin: the third field must be sha256:"),
        ("admin write " + "0" * 64, "line 1: key admin: the third field must be sha256:"),
        (
            "a read sha256:"
            + "0" * 64
            + "\nb read sha256:"
            + "1" * 64
            + "\na write sha256:"
            + "2" * 64,
            "line 3: the name a is already on line 1",
        ),
    ],
)
def test_a_malformed_key_file_stops_the_app_naming_the_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        Settings.from_env({"MONGO_HOST": "db", "API_KEYS": text})


def test_a_key_pasted_into_the_file_is_never_repeated_in_the_error() -> None:
    key = usersapi_keys.new_key()
    with pytest.raises(ConfigError) as refused_file:
        Settings.from_env({"MONGO_HOST": "db", "API_KEYS": f"admin write {key}"})
    assert key not in str(refused_file.value)


def test_keys_come_from_api_keys_file_or_api_keys_not_both(tmp_path: Path) -> None:
    path = tmp_path / "api_keys"
    path.write_text(f"# the stack's keys\n{KEY_LINES}\n\n", encoding="utf-8")
    settings = Settings.from_env({"MONGO_HOST": "db", "API_KEYS_FILE": str(path)})
    assert [key.name for key in settings.api_keys] == ["writer", "reader"]
    assert [key.scope for key in settings.api_keys] == ["write", "read"]
    with pytest.raises(ConfigError, match="set API_KEYS or API_KEYS_FILE, not both"):
        Settings.from_env({"MONGO_HOST": "db", "API_KEYS_FILE": str(path), "API_KEYS": "x"})
    assert WRITE_KEY not in repr(settings)
    assert "sha256" not in repr(settings)


def test_without_a_key_the_app_refuses_a_real_mongodb() -> None:
    with pytest.raises(ConfigError, match="no API key: set API_KEYS_FILE") as refusal:
        create_app(Settings.from_env({"MONGO_HOST": "db"}))
    assert "usersapi_auth.py new NAME write" in str(refusal.value)


def test_keys_the_project_makes_are_long_random_and_recognisable() -> None:
    keys = {usersapi_keys.new_key() for _ in range(100)}
    assert len(keys) == 100
    for key in keys:
        assert re.fullmatch(r"usersapi_[A-Za-z0-9_-]{43}", key)  # 32 bytes, URL-safe base64
    line = usersapi_keys.key_line("ci", "read", WRITE_KEY)
    assert line == f"ci read sha256:{hashlib.sha256(WRITE_KEY.encode()).hexdigest()}"


@pytest.mark.process
def test_the_key_command_makes_a_key_and_checks_a_file(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "usersapi_auth.py", *args]
        return subprocess.run(command, cwd=HERE, capture_output=True, text=True, check=False)  # noqa: S603

    made = run("new", "ci", "read")
    assert made.returncode == 0, made.stderr
    line, key = made.stdout.splitlines()
    assert usersapi_keys.parse_keys(line)[0].digest == usersapi_keys.digest_of(key)
    (tmp_path / "keys").write_text(line + "\n", encoding="utf-8")
    assert run("check", str(tmp_path / "keys")).stdout.endswith("1 keys: ci\n")
    (tmp_path / "bad").write_text(f"ci read {key}\n", encoding="utf-8")
    bad = run("check", str(tmp_path / "bad"))
    assert bad.returncode == 1
    assert "line 1" in bad.stderr
    assert key not in bad.stderr + bad.stdout
    assert run("new", "bad name", "read").returncode == 1
    assert run("nonsense").returncode == 2


# --------------------------------------------------------------------------------------
# Health, readiness, OpenAPI, errors for unknown routes and methods
# --------------------------------------------------------------------------------------


def test_health_and_ready(client: FlaskClient) -> None:
    assert client.get("/health").json == {"status": "ok"}
    assert client.get("/ready").json == {"status": "ok"}


def test_unknown_route_is_a_problem(client: FlaskClient) -> None:
    assert_problem(client.get("/nowhere"), 404)


def test_wrong_method_is_405_with_allow(client: FlaskClient) -> None:
    response = client.delete("/users")
    assert_problem(response, 405)
    assert "POST" in response.headers["Allow"]
    assert_problem(client.put("/users/0123456789abcdef01234567", json={}), 405)
    search = client.delete("/users/search")
    assert_problem(search, 405)
    assert set(search.headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}


def test_openapi_describes_every_route_from_the_models(client: FlaskClient) -> None:
    doc = client.get("/openapi.json").json
    assert doc is not None
    assert doc["openapi"] == "3.1.0"
    assert set(doc["paths"]) == {
        "/users",
        "/users/search",
        "/users/{user_id}",
        "/health",
        "/ready",
        "/openapi.json",
    }
    assert set(doc["paths"]["/users"]) == {"get", "post", "patch"}
    assert set(doc["paths"]["/users/{user_id}"]) == {"get", "patch", "delete"}
    schemas = doc["components"]["schemas"]
    assert schemas["UserIn"] == usersapi.UserIn.model_json_schema()
    assert schemas["UserIn"]["additionalProperties"] is False
    search = doc["paths"]["/users/search"]["get"]["parameters"]
    assert {p["name"]: p["required"] for p in search} == {
        "q": True,
        "limit": False,
        "offset": False,
    }


def examples_of(content: Json) -> dict[str, Any]:
    return {name: example["value"] for name, example in content["examples"].items()}


def test_openapi_describes_parameters_and_batch_rules(client: FlaskClient) -> None:
    doc = client.get("/openapi.json").json
    assert doc is not None
    search = doc["paths"]["/users/search"]["get"]["parameters"]
    assert all(parameter["description"] for parameter in search)
    post = doc["paths"]["/users"]["post"]
    assert "1 to 1000" in post["description"]
    assert "nothing is written" in post["description"]


def test_openapi_request_examples_are_accepted(client: FlaskClient) -> None:
    doc = client.get("/openapi.json").json
    assert doc is not None
    post = examples_of(doc["paths"]["/users"]["post"]["requestBody"]["content"]["application/json"])
    assert set(post) == {"one", "batch"}
    assert client.post("/users", json=post["one"]).status_code == 201
    created = client.post("/users", json=post["batch"])
    assert created.status_code == 201
    assert [user["email"] for user in created.json or []] == [u["email"] for u in post["batch"]]
    path_edit = doc["paths"]["/users/{user_id}"]["patch"]["requestBody"]["content"]
    (changes,) = examples_of(path_edit["application/json"]).values()
    user = listed(client)[0]
    edited = client.patch(f"/users/{user['id']}", json=changes)
    assert edited.status_code == 200
    assert edited.json == {
        **user,
        **changes,
        "version": user["version"] + 1,
        "updated_at": (edited.json or {})["updated_at"],
    }


def test_openapi_error_examples_are_what_the_api_answers(client: FlaskClient) -> None:
    doc = client.get("/openapi.json").json
    assert doc is not None
    post = doc["paths"]["/users"]["post"]
    bodies = examples_of(post["requestBody"]["content"]["application/json"])
    errors = {
        status: examples_of(post["responses"][status]["content"]["application/problem+json"])
        for status in ("409", "422", "413", "415")
    }
    client.post("/users", json=bodies["one"])
    assert client.post("/users", json=bodies["one"]).json == errors["409"]["one"]
    repeated = [bodies["batch"][0], {**bodies["batch"][1], "email": bodies["batch"][0]["email"]}]
    assert client.post("/users", json=repeated).json == errors["409"]["batch"]
    bad_email = {**bodies["one"], "email": "not-an-email"}
    assert client.post("/users", json=bad_email).json == errors["422"]["one"]
    no_name = {k: v for k, v in bodies["batch"][0].items() if k != "name"}
    bad_username = {**bodies["batch"][1], "username": "x"}
    assert client.post("/users", json=[no_name, bad_username]).json == errors["422"]["batch"]
    too_many = [a_user(n) for n in range(1001)]
    assert client.post("/users", json=too_many).json == errors["413"]["batch"]
    assert client.post("/users", data="{}").json == errors["415"]["type"]


# --------------------------------------------------------------------------------------
# Interactive documentation
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/docs/"])
def test_the_root_leads_to_the_docs(client: FlaskClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 302
    assert response.headers["Location"] == "/docs"


def test_the_docs_page_loads_only_files_of_this_api(client: FlaskClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    assert page.mimetype == "text/html"
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self';" in csp
    assert "connect-src 'self';" in csp
    html = page.get_data(as_text=True)
    assert "<script>" not in html  # no inline script: the policy would block it
    sources = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert sources
    for source in sources:
        assert source.startswith("/docs/")
        assert client.get(source).status_code == 200
    assert "validatorUrl: null" in client.get("/docs/swagger-initializer.js").get_data(as_text=True)


@pytest.mark.parametrize("asset", ["index.html", "oauth2-redirect.html", "..%2Fusersapi.py"])
def test_only_the_files_the_docs_page_uses_are_served(client: FlaskClient, asset: str) -> None:
    assert_problem(client.get(f"/docs/{asset}"), 404)


def test_openapi_describes_versions_and_preconditions(client: FlaskClient) -> None:
    doc = json_of(client.get("/openapi.json"))
    schemas = doc["components"]["schemas"]
    assert "version" in schemas["User"]["required"]
    assert schemas["User"]["properties"]["version"] == {
        "minimum": 1,
        "title": "Version",
        "type": "integer",
    }
    assert schemas["UserEdit"]["properties"]["version"]["minimum"] == 1
    one = doc["paths"]["/users/{user_id}"]
    assert "ETag" in one["get"]["responses"]["200"]["headers"]
    assert set(one["get"]["responses"]["304"]) == {"description", "headers"}
    assert "If-None-Match" in {p["name"] for p in one["get"]["parameters"]}
    for method in ("patch", "delete"):
        assert "412" in one[method]["responses"]
        assert "If-Match" in {p["name"] for p in one[method]["parameters"]}
    assert "ETag" in one["patch"]["responses"]["200"]["headers"]
    batch = doc["paths"]["/users"]
    assert "412" in batch["patch"]["responses"]
    assert "ETag" in batch["post"]["responses"]["201"]["headers"]
    assert batch["patch"]["responses"]["412"]["description"] == "Precondition Failed"


# --------------------------------------------------------------------------------------
# Create
# --------------------------------------------------------------------------------------


def test_create_one_user(client: FlaskClient) -> None:
    response = client.post(
        "/users", json={"name": "  Ada Lovelace ", "email": "Ada@Example.COM", "username": "ada"}
    )
    assert response.status_code == 201
    user = response.json
    assert user is not None
    assert re.fullmatch(r"[0-9a-f]{24}", user["id"])
    assert response.headers["Location"] == f"/users/{user['id']}"
    assert user["name"] == "Ada Lovelace"
    assert user["email"] == "ada@example.com"
    assert user["username"] == "ada"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", user["created_at"])
    assert user["updated_at"] == user["created_at"]
    assert client.get(f"/users/{user['id']}").json == user


def test_create_a_batch_returns_users_in_input_order(client: FlaskClient) -> None:
    created = create(client, [a_user(n) for n in range(3)])
    assert [user["username"] for user in created] == ["user0", "user1", "user2"]
    assert len({user["id"] for user in created}) == 3
    assert listed(client) == created


@pytest.mark.parametrize(
    ("fields", "bad_field"),
    [
        ({"name": ""}, "name"),
        ({"name": "   "}, "name"),
        ({"name": "x" * 101}, "name"),
        ({"name": 42}, "name"),
        ({"email": "not-an-email"}, "email"),
        ({"email": "a@b"}, "email"),
        ({"username": "ab"}, "username"),
        ({"username": "x" * 31}, "username"),
        ({"username": "bad name"}, "username"),
        ({"username": "ünï"}, "username"),
        ({"email": {"$ne": None}}, "email"),
        ({"username": {"$gt": ""}}, "username"),
        ({"role": "admin"}, "role"),
        ({"_id": "0123456789abcdef01234567"}, "_id"),
    ],
)
def test_invalid_fields_are_422(client: FlaskClient, fields: Json, bad_field: str) -> None:
    errors = assert_problem(client.post("/users", json=a_user(1, **fields)), 422)
    assert fields_in(errors) == {(None, bad_field)}
    assert user_count(client) == 0


def test_missing_fields_are_each_reported(client: FlaskClient) -> None:
    errors = assert_problem(client.post("/users", json={"name": "x"}), 422)
    assert fields_in(errors) == {(None, "email"), (None, "username")}


def test_a_batch_with_any_invalid_item_writes_nothing_and_lists_every_failure(
    client: FlaskClient,
) -> None:
    create(client, a_user(0))
    batch = [
        a_user(1),
        a_user(2, username="x"),
        a_user(3, email="user0@EXAMPLE.com"),
        "not an object",
        a_user(5, name=""),
    ]
    errors = assert_problem(client.post("/users", json=batch), 422)
    assert fields_in(errors) == {(1, "username"), (2, "email"), (3, None), (4, "name")}
    assert user_count(client) == 1


def test_emails_are_unique_case_insensitively(client: FlaskClient) -> None:
    create(client, a_user(1, email="Same@Example.com"))
    errors = assert_problem(client.post("/users", json=a_user(2, email="same@example.COM")), 409)
    assert errors == [
        {"index": None, "field": "email", "message": "email same@example.com is already taken"}
    ]
    assert user_count(client) == 1


def test_a_batch_with_a_taken_email_writes_nothing(client: FlaskClient) -> None:
    create(client, a_user(1))
    batch = [a_user(2), a_user(3, email="USER1@example.com"), a_user(4)]
    errors = assert_problem(client.post("/users", json=batch), 409)
    assert fields_in(errors) == {(1, "email")}
    assert user_count(client) == 1


def test_emails_repeated_inside_a_batch_are_409(client: FlaskClient) -> None:
    batch = [a_user(1, email="dup@x.io"), a_user(2), a_user(3, email="DUP@x.io")]
    response = client.post("/users", json=batch)
    errors = assert_problem(response, 409)
    assert errors[0]["index"] == 2
    assert "repeated in the batch (item 0)" in errors[0]["message"]
    assert response.json is not None
    assert response.json["detail"] == "an email is repeated in the batch"
    assert user_count(client) == 0
    create(client, a_user(9))
    both = [*batch, a_user(4, email="user9@example.com")]
    response = client.post("/users", json=both)
    assert fields_in(assert_problem(response, 409)) == {(2, "email"), (3, "email")}
    assert response.json is not None
    assert response.json["detail"] == "some emails are repeated in the batch or already in use"


def test_only_email_must_be_unique(client: FlaskClient) -> None:
    create(client, a_user(1))
    create(client, a_user(2, name="User 1", username="user1"))
    assert user_count(client) == 2


def test_values_with_operators_are_stored_literally(client: FlaskClient) -> None:
    user = create(client, a_user(1, name="$where: {'$gt': ''}"))
    assert client.get(f"/users/{user['id']}").json == user


@pytest.mark.parametrize(
    ("data", "content_type", "status"),
    [
        ("{not json", "application/json", 400),
        ("[]", "application/json", 400),
        ('"a string"', "application/json", 400),
        ("42", "application/json", 400),
        ("null", "application/json", 400),
        ("[" * 100_000 + "]" * 100_000, "application/json", 400),
        ('{"name": "x"}', "text/plain", 415),
        ("name=x", "application/x-www-form-urlencoded", 415),
        ("", "", 415),
    ],
)
def test_malformed_bodies(client: FlaskClient, data: str, content_type: str, status: int) -> None:
    assert_problem(client.post("/users", data=data, content_type=content_type), status)
    assert_problem(client.patch("/users", data=data, content_type=content_type), status)


def test_a_body_over_the_size_limit_is_413() -> None:
    client = keyed(create_app(in_memory(max_content_length=1000)))
    response = client.post("/users", json=[a_user(n) for n in range(30)])
    assert_problem(response, 413)
    assert user_count(client) == 0


@pytest.mark.process
def test_a_keep_alive_connection_outlives_a_body_the_api_would_not_read(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MONGO_", "LOG_"))}
    env.update(MONGO_URI="mongomock://", API_KEYS=KEY_LINES)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "metrics")
    port = free_port()
    server = start_gunicorn(port, env, tmp_path / "gunicorn.log", "--workers", "1")
    try:
        wait_until_up(port)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        json_type = {"Content-Type": "application/json"}
        big = json.dumps([a_user(n, name="x" * 90) for n in range(11_000)])  # about 2 MB
        half = big[: len(big) // 4]  # within MAX_CONTENT_LENGTH, far beyond gunicorn's 64 KiB
        for body, headers, status in [
            (big, {**bearer(WRITE_KEY), **json_type}, 413),  # too large: never parsed
            (half, json_type, 401),  # no key: never read
            (half, {**bearer(READ_KEY), **json_type}, 403),
        ]:
            connection.request("POST", "/users", body, headers)
            response = connection.getresponse()
            assert response.status == status
            assert response.getheader("Connection") == "keep-alive"
            response.read()
            sock = connection.sock
            # The next request on the same connection is answered.
            connection.request("GET", "/users?limit=1", headers=bearer(READ_KEY))
            assert connection.getresponse().read()
            assert connection.sock is sock
        connection.close()
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_batch_over_max_batch_is_413() -> None:
    client = keyed(create_app(in_memory(max_batch=3)))
    assert_problem(client.post("/users", json=[a_user(n) for n in range(4)]), 413)
    assert_problem(client.patch("/users", json=[{"id": "x", "name": "y"}] * 4), 413)
    create(client, [a_user(n) for n in range(3)])


def test_the_unique_index_catches_a_race_and_undoes_the_batch(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    create(client, a_user(9))
    # A concurrent request takes the email between the check and the write.
    monkeypatch.setattr(UserStore, "owners_of", lambda _self, _emails: {})
    batch = [a_user(1), a_user(2), a_user(3, email="user9@example.com")]
    errors = assert_problem(client.post("/users", json=batch), 409)
    assert fields_in(errors) == {(2, "email")}
    assert "user9@example.com was taken by a concurrent request" in errors[0]["message"]
    assert user_count(client) == 1
    assert store_of(app).users().count_documents({}) == 1


def all_read_before_any_write(monkeypatch: pytest.MonkeyPatch, read: str, racers: int) -> None:
    """Make a race deterministic: each racer's first call of UserStore.READ (the check
    before its write) waits until every racer has made it. So every racer checks before any
    writes, and only the database's own rule can stop all but one."""
    barrier = threading.Barrier(racers, timeout=10)
    original = getattr(UserStore, read)
    waited = threading.local()

    def read_then_wait(self: UserStore, *args: Any) -> Any:
        result = original(self, *args)
        if not getattr(waited, "done", False):
            waited.done = True
            barrier.wait()
        return result

    monkeypatch.setattr(UserStore, read, read_then_wait)


def test_concurrent_creates_with_one_email_give_one_201_and_one_409(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    all_read_before_any_write(monkeypatch, "owners_of", 2)  # both find the email free
    statuses = race(2, lambda racer: racer.post("/users", json=a_user(1, email="race@x.io")), app)
    assert sorted(statuses) == [201, 409]  # the unique index stopped the second
    assert user_count(keyed(app)) == 1


# --------------------------------------------------------------------------------------
# Read, list, paginate
# --------------------------------------------------------------------------------------


def test_unknown_ids_are_404(client: FlaskClient) -> None:
    user_id = "0123456789ABCDEF01234567"
    errors = assert_problem(client.get(f"/users/{user_id}"), 404)
    assert errors == [{"index": None, "field": "id", "message": f"no user has id {user_id}"}]
    assert_problem(client.delete(f"/users/{user_id}"), 404)
    assert_problem(client.patch(f"/users/{user_id}", json={"name": "x"}), 404)


@pytest.mark.parametrize("user_id", ["nope", "0" * 25, "0" * 23, "$ne", "g" * 24, "searchy"])
def test_malformed_ids_are_404_like_unknown_ones(client: FlaskClient, user_id: str) -> None:
    same = [{"index": None, "field": "id", "message": f"no user has id {user_id}"}]
    assert assert_problem(client.get(f"/users/{user_id}"), 404) == same
    assert assert_problem(client.delete(f"/users/{user_id}"), 404) == same
    assert assert_problem(client.patch(f"/users/{user_id}", json={"name": "x"}), 404) == same
    response = client.delete(f"/users/{user_id}", headers={"If-Match": '"1"'})
    assert assert_problem(response, 404) == same


def test_other_paths_under_users_are_unknown_routes(client: FlaskClient) -> None:
    errors = assert_problem(client.get("/users/0123456789abcdef01234567/extra"), 404)
    assert errors == []


def test_pagination(client: FlaskClient) -> None:
    created = create(client, [a_user(n) for n in range(7)])
    assert page(client, "?limit=3") == {"items": created[:3], "total": 7, "limit": 3, "offset": 0}
    last = {"items": created[6:], "total": 7, "limit": 3, "offset": 6}
    assert page(client, "?limit=3&offset=6") == last
    assert page(client, "?offset=100") == {"items": [], "total": 7, "limit": 50, "offset": 100}


def test_the_default_page_is_50_and_the_largest_500(client: FlaskClient) -> None:
    create(client, [a_user(n) for n in range(60)])
    default = page(client)
    assert (len(default["items"]), default["limit"], default["total"]) == (50, 50, 60)
    assert len(listed(client, "?limit=500")) == 60


@pytest.mark.parametrize(
    "query",
    ["limit=0", "limit=501", "limit=abc", "limit=1.5", "offset=-1", "offset=x", "offset=1e99"],
)
def test_bad_pagination_is_400(client: FlaskClient, query: str) -> None:
    field = query.split("=", maxsplit=1)[0]
    rule = {
        "limit": "use a whole number from 1 to 500",
        "offset": "use a whole number from 0 to 2147483647",
    }[field]
    for path in (f"/users?{query}", f"/users/search?q=a&{query}"):
        errors = assert_problem(client.get(path), 400)
        assert errors == [{"index": None, "field": field, "message": rule}]


# --------------------------------------------------------------------------------------
# Search
# --------------------------------------------------------------------------------------


@pytest.fixture
def people(client: FlaskClient) -> list[Json]:
    users: list[Json] = create(
        client,
        [
            {"name": "Grace Hopper", "email": "grace@navy.mil", "username": "amazing_grace"},
            {"name": "Alan Turing", "email": "alan@bletchley.uk", "username": "enigma"},
            {"name": "Ada (Countess)", "email": "ada+math@lovelace.org", "username": "a.d.a"},
        ],
    )
    return users


def search(client: FlaskClient, q: str, **params: str) -> list[str]:
    response = client.get("/users/search", query_string={"q": q, **params})
    assert response.status_code == 200, response.json
    assert response.json is not None
    return [user["username"] for user in response.json["items"]]


@pytest.mark.usefixtures("people")
def test_search_matches_name_email_or_username_case_insensitively(client: FlaskClient) -> None:
    assert search(client, "HOPPER") == ["amazing_grace"]
    assert search(client, "bletchley") == ["enigma"]
    assert search(client, "Enig") == ["enigma"]
    assert search(client, "a") == ["amazing_grace", "enigma", "a.d.a"]


@pytest.mark.usefixtures("people")
def test_search_takes_the_text_literally(client: FlaskClient) -> None:
    assert search(client, ".*") == []
    assert search(client, "a.d") == ["a.d.a"]
    assert search(client, "ada+math") == ["a.d.a"]
    assert search(client, "(Countess)") == ["a.d.a"]
    assert search(client, "^Grace") == []
    assert search(client, "[a-z]") == []
    assert search(client, "$ne") == []
    assert search(client, '{"$gt": ""}') == []
    assert search(client, "\\") == []


@pytest.mark.usefixtures("people")
def test_search_paginates(client: FlaskClient) -> None:
    response = client.get("/users/search?q=a&limit=1&offset=1").json
    assert response is not None
    assert [user["username"] for user in response["items"]] == ["enigma"]
    assert (response["total"], response["limit"], response["offset"]) == (3, 1, 1)


@pytest.mark.parametrize("query", ["", "?q=", "?q=%20%20", "?q=%00", "?q=" + "x" * 201])
def test_search_needs_some_text(client: FlaskClient, query: str) -> None:
    errors = assert_problem(client.get(f"/users/search{query}"), 400)
    expected = "required" if not query else "use 1 to 200 characters, not only spaces"
    assert errors == [{"index": None, "field": "q", "message": expected}]


# --------------------------------------------------------------------------------------
# Edit
# --------------------------------------------------------------------------------------


def test_edit_one_user(client: FlaskClient) -> None:
    user = create(client, a_user(1))
    time.sleep(0.002)  # timestamps are in milliseconds
    response = client.patch(f"/users/{user['id']}", json={"name": " New Name ", "email": "N@x.io"})
    assert response.status_code == 200
    edited = response.json
    assert edited is not None
    assert edited["name"] == "New Name"
    assert edited["email"] == "n@x.io"
    assert edited["username"] == user["username"]
    assert edited["created_at"] == user["created_at"]
    assert edited["updated_at"] > user["updated_at"]  # (a: the user was made a moment ago)
    assert client.get(f"/users/{user['id']}").json == edited


def test_a_user_may_keep_its_own_email(client: FlaskClient) -> None:
    user = create(client, a_user(1))
    response = client.patch(f"/users/{user['id']}", json={"email": "USER1@example.com"})
    assert response.status_code == 200


def test_editing_to_a_taken_email_is_409(client: FlaskClient) -> None:
    first, second = create(client, [a_user(1), a_user(2)])
    errors = assert_problem(
        client.patch(f"/users/{second['id']}", json={"email": first["email"].upper()}), 409
    )
    assert fields_in(errors) == {(None, "email")}
    assert client.get(f"/users/{second['id']}").json == second


@pytest.mark.parametrize(
    ("body", "bad_field"),
    [
        ({}, None),
        ({"name": None}, "name"),
        ({"username": "a b"}, "username"),
        ({"email": "nope"}, "email"),
        ({"role": "admin"}, "role"),
        ({"id": "0123456789abcdef01234567", "name": "x"}, "id"),
    ],
)
def test_invalid_edits_are_422(client: FlaskClient, body: Json, bad_field: str | None) -> None:
    user = create(client, a_user(1))
    errors = assert_problem(client.patch(f"/users/{user['id']}", json=body), 422)
    assert fields_in(errors) == {(None, bad_field)}
    assert client.get(f"/users/{user['id']}").json == user


def test_editing_one_user_takes_an_object(client: FlaskClient) -> None:
    user = create(client, a_user(1))
    assert_problem(client.patch(f"/users/{user['id']}", json=[{"name": "x"}]), 400)


def test_batch_edit(client: FlaskClient) -> None:
    users = create(client, [a_user(n) for n in range(3)])
    edits = [
        {"id": users[2]["id"], "name": "Two"},
        {"id": users[0]["id"], "email": "zero@x.io", "username": "zero"},
    ]
    response = client.patch("/users", json=edits)
    assert response.status_code == 200
    edited = response.json
    assert edited is not None
    assert [(u["id"], u["name"], u["email"]) for u in edited] == [
        (users[2]["id"], "Two", users[2]["email"]),
        (users[0]["id"], users[0]["name"], "zero@x.io"),
    ]
    assert client.get(f"/users/{users[1]['id']}").json == users[1]


def test_batch_edit_of_one_object_returns_one_object(client: FlaskClient) -> None:
    user = create(client, a_user(1))
    edited = client.patch("/users", json={"id": user["id"], "name": "Solo"}).json
    assert edited is not None
    assert edited["name"] == "Solo"


def test_batch_edit_lists_every_missing_id_and_writes_nothing(client: FlaskClient) -> None:
    user = create(client, a_user(1))
    edits = [
        {"id": user["id"], "name": "Changed"},
        {"id": "0123456789abcdef01234567", "name": "x"},
        {"id": "not-an-id", "name": "y"},
    ]
    errors = assert_problem(client.patch("/users", json=edits), 404)
    assert fields_in(errors) == {(1, "id"), (2, "id")}
    assert client.get(f"/users/{user['id']}").json == user


def test_batch_edit_reports_every_kind_of_failure_under_the_gravest_status(
    client: FlaskClient,
) -> None:
    first, second = create(client, [a_user(1), a_user(2)])
    edits = [
        {"id": first["id"], "email": second["email"]},
        {"id": "0123456789abcdef01234567", "name": "x"},
        {"id": second["id"], "username": "?"},
    ]
    errors = assert_problem(client.patch("/users", json=edits), 422)
    assert fields_in(errors) == {(0, "email"), (1, "id"), (2, "username")}
    assert listed(client) == [first, second]


def test_batch_edit_rejects_repeated_ids_and_emails(client: FlaskClient) -> None:
    first, second = create(client, [a_user(1), a_user(2)])
    same_id = [{"id": first["id"], "name": "a"}, {"id": first["id"], "name": "b"}]
    assert fields_in(assert_problem(client.patch("/users", json=same_id), 422)) == {(1, "id")}
    same_email = [{"id": first["id"], "email": "x@x.io"}, {"id": second["id"], "email": "X@x.io"}]
    errors = assert_problem(client.patch("/users", json=same_email), 409)
    assert fields_in(errors) == {(1, "email")}
    swap = [
        {"id": first["id"], "email": second["email"]},
        {"id": second["id"], "email": first["email"]},
    ]
    assert fields_in(assert_problem(client.patch("/users", json=swap), 409)) == {
        (0, "email"),
        (1, "email"),
    }
    assert listed(client) == [first, second]


def test_one_user_named_twice_in_two_letter_cases_is_422_at_once(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = create(client, a_user(1))
    attempts: list[int] = []
    once = usersapi.edit_users_once

    def counted(*args: Any) -> Any:
        attempts.append(1)
        return once(*args)

    monkeypatch.setattr(usersapi, "edit_users_once", counted)
    twice = [{"id": user["id"], "name": "a"}, {"id": user["id"].upper(), "name": "b"}]
    errors = assert_problem(client.patch("/users", json=twice), 422)
    assert errors == [
        {"index": 1, "field": "id", "message": f"id {user['id']} is repeated in the batch (item 0)"}
    ]
    assert len(attempts) == 1  # refused as it is, not retried as a race it can never win
    assert json_of(client.get(f"/users/{user['id']}"))["version"] == 1


def test_an_edit_race_caught_by_the_index_reverts_the_batch(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    users = create(client, [a_user(n) for n in range(3)])
    monkeypatch.setattr(UserStore, "owners_of", lambda _self, _emails: {})
    edits = [
        {"id": users[0]["id"], "name": "Changed"},
        {"id": users[1]["id"], "email": users[2]["email"]},
    ]
    assert fields_in(assert_problem(client.patch("/users", json=edits), 409)) == {(1, "email")}
    assert listed(client) == users
    assert store_of(app).users().count_documents({"write_id": {"$exists": True}}) == 0


# --------------------------------------------------------------------------------------
# Delete
# --------------------------------------------------------------------------------------


def test_delete(client: FlaskClient) -> None:
    keep, gone = create(client, [a_user(1), a_user(2)])
    response = client.delete(f"/users/{gone['id']}")
    assert response.status_code == 204
    assert response.get_data() == b""
    assert "Content-Type" not in response.headers
    assert_problem(client.get(f"/users/{gone['id']}"), 404)
    assert_problem(client.delete(f"/users/{gone['id']}"), 404)
    assert listed(client) == [keep]
    create(client, a_user(3, email=gone["email"]))


# --------------------------------------------------------------------------------------
# Problem documents and bodies written for people
# --------------------------------------------------------------------------------------


def test_problem_titles_are_rfc_9110_reason_phrases() -> None:
    client = keyed(create_app(in_memory(max_batch=1)))
    too_many = client.post("/users", json=[a_user(1), a_user(2)])
    assert_problem(too_many, 413)
    assert too_many.json is not None
    assert json_of(too_many)["title"] == "Content Too Large"
    invalid = client.post("/users", json=a_user(1, username="?"))
    assert_problem(invalid, 422)
    assert invalid.json is not None
    assert json_of(invalid)["title"] == "Unprocessable Content"
    doc = client.get("/openapi.json").json
    assert doc is not None
    responses = doc["paths"]["/users"]["post"]["responses"]
    assert responses["413"]["description"] == "Content Too Large"
    assert responses["422"]["description"] == "Unprocessable Content"


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        (a_user(1, username="a b"), "username", "use 3 to 30 letters, digits, '.', '_' or '-'"),
        (a_user(1, username=7), "username", "use 3 to 30 letters, digits, '.', '_' or '-'"),
        (a_user(1, name=""), "name", "use 1 to 100 characters, not only spaces"),
        (a_user(1, name="x" * 101), "name", "use 1 to 100 characters, not only spaces"),
        (a_user(1, email=["x"]), "email", "use an email address, such as ada@example.com"),
        (a_user(1, role="admin"), "role", "not a field of a user"),
        ({"name": "x", "username": "xyz"}, "email", "required"),
        ([a_user(1), "not an object"], None, "send each user as a JSON object"),
    ],
)
def test_validation_messages_are_written_for_people(
    client: FlaskClient, body: Json, field: str | None, message: str
) -> None:
    errors = assert_problem(client.post("/users", json=body), 422)
    assert [(error["field"], error["message"]) for error in errors] == [(field, message)]


@pytest.mark.parametrize(
    ("method", "path", "body", "detail"),
    [
        ("GET", "/users?limit=0", None, "invalid query parameters"),
        ("POST", "/users", "{", "the body is not valid JSON"),
        ("POST", "/users", "[]", "send one user object or a non-empty array of them"),
        ("POST", "/users", "7", "send one user object or a non-empty array of them"),
        ("PATCH", "/users", [{"id": "0" * 24, "name": "x"}], "some users do not exist"),
        ("PATCH", "/users/" + "0" * 24, {}, "some users are invalid"),
        ("PATCH", "/users/" + "0" * 24, [], "send the fields to change as a JSON object"),
        ("DELETE", "/users/" + "0" * 24, None, "the user does not exist"),
    ],
)
def test_each_refusal_says_what_went_wrong(
    client: FlaskClient, method: str, path: str, body: Json, detail: str
) -> None:
    data = body if isinstance(body, str) else json.dumps(body)
    response = client.open(path, method=method, data=data, content_type="application/json")
    assert json_of(response)["detail"] == detail


def test_refusals_of_versions_and_races_say_what_went_wrong(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = create(client, a_user(1))
    path = f"/users/{user['id']}"
    stale = client.delete(path, headers={"If-Match": etag(7)})
    assert json_of(stale)["detail"] == "the user has changed"
    stale = client.patch("/users", json=[{"id": user["id"], "version": 7, "name": "x"}])
    assert json_of(stale)["detail"] == "some users have changed since the version given"
    taken = client.patch("/users", json=[{"id": user["id"], "email": "a@x.io"}, {"id": user["id"]}])
    assert json_of(taken)["detail"] == "some users are invalid"
    monkeypatch.setattr(UserStore, "owners_of", lambda _self, _emails: {})
    other = create(client, a_user(2))
    race = client.post("/users", json=a_user(3, email=other["email"]))
    assert json_of(race)["detail"] == "an email is already in use"
    assert json_of(race)["errors"][0]["message"] == (
        f"email {other['email']} was taken by a concurrent request"
    )


def test_versions_beyond_what_mongodb_holds_match_nothing() -> None:
    etags = werkzeug.http.parse_etags
    assert usersapi.accepted_versions(etags('"999999999999999999"')) == frozenset({10**18 - 1})
    assert usersapi.accepted_versions(etags('"9999999999999999999"')) == frozenset()  # > 2**63
    assert usersapi.accepted_versions(etags('"1", W/"2", "x", ""')) == frozenset({1})
    assert usersapi.accepted_versions(etags("*")) is None


def test_no_message_shows_a_pattern_or_a_model_name(client: FlaskClient) -> None:
    user = create(client, a_user(1))
    answers = [
        client.post("/users", json=[a_user(2, username="?", email="@", name=" "), 3, {}]),
        client.patch("/users", json=[{"id": 1, "version": "2"}, {"id": user["id"], "x": 1}]),
        client.patch(f"/users/{user['id']}", json={"name": None}),
        client.get("/users/search?q=%00&limit=x&offset=-1"),
    ]
    messages = [error["message"] for answer in answers for error in json_of(answer)["errors"]]
    assert len(messages) >= 10
    for message in messages:
        assert not re.search(r"[\^\[\]{}$]|UserIn|UserEdit|UserChanges|Query|dictionary", message)


def test_json_bodies_end_with_a_newline(client: FlaskClient) -> None:
    user = create(client, a_user(1))
    for path in ("/users", f"/users/{user['id']}", "/users/nope", "/openapi.json", "/health"):
        body = client.get(path).get_data(as_text=True)
        assert body.endswith("}\n"), path
        json.loads(body)


# --------------------------------------------------------------------------------------
# Versions, entity tags and preconditions (optimistic concurrency)
# --------------------------------------------------------------------------------------


def etag(version: int) -> str:
    return f'"{version}"'


def test_a_new_user_is_at_version_1_and_carries_its_etag(client: FlaskClient) -> None:
    response = client.post("/users", json=a_user(1))
    assert response.status_code == 201
    assert response.json is not None
    assert json_of(response)["version"] == 1
    assert response.headers["ETag"] == etag(1)
    batch = client.post("/users", json=[a_user(2), a_user(3)])
    assert batch.json is not None
    assert [user["version"] for user in batch.json] == [1, 1]
    assert "ETag" not in batch.headers
    got = client.get(f"/users/{json_of(response)['id']}")
    assert got.headers["ETag"] == etag(1)


def test_every_change_adds_one_to_the_version_and_changes_the_etag(client: FlaskClient) -> None:
    user, other = create(client, [a_user(1), a_user(2)])
    path = f"/users/{user['id']}"
    one = client.patch(path, json={"name": "One"})
    assert (json_of(one)["version"], one.headers["ETag"]) == (2, etag(2))
    solo = client.patch("/users", json={"id": user["id"], "name": "Two"})
    assert (json_of(solo)["version"], solo.headers["ETag"]) == (3, etag(3))
    batch = client.patch("/users", json=[{"id": user["id"], "name": "3"}, {"id": other["id"]}])
    assert_problem(batch, 422)
    batch = client.patch(
        "/users", json=[{"id": user["id"], "name": "Three"}, {"id": other["id"], "name": "O"}]
    )
    assert [edited["version"] for edited in json_of(batch)] == [4, 2]
    assert "ETag" not in batch.headers
    got = client.get(path)
    assert (json_of(got)["version"], got.headers["ETag"]) == (4, etag(4))
    assert json_of(got)["name"] == "Three"


def test_a_user_stored_without_a_version_is_at_version_1(app: Flask, client: FlaskClient) -> None:
    moment = usersapi.now()
    old = {**a_user(1), "created_at": moment, "updated_at": moment}
    other = {**a_user(2), "created_at": moment, "updated_at": moment}
    store_of(app).users().insert_many([old, other])
    path = f"/users/{old['_id']}"
    got = client.get(path)
    assert (json_of(got)["version"], got.headers["ETag"]) == (1, etag(1))
    assert client.get(path, headers={"If-None-Match": etag(1)}).status_code == 304
    edited = client.patch(path, headers={"If-Match": etag(1)}, json={"name": "New"})
    assert (edited.status_code, json_of(edited)["version"]) == (200, 2)
    batch = [{"id": str(other["_id"]), "version": 1, "name": "Other"}]
    assert json_of(client.patch("/users", json=batch))[0]["version"] == 2
    third = {**a_user(3), "created_at": moment, "updated_at": moment}
    store_of(app).users().insert_one(third)
    gone = client.delete(f"/users/{third['_id']}", headers={"If-Match": etag(1)})
    assert gone.status_code == 204


@pytest.mark.parametrize("if_none_match", [etag(1), f"W/{etag(1)}", "*", f'"7", {etag(1)}'])
def test_get_with_a_matching_if_none_match_is_304_without_a_body(
    client: FlaskClient, if_none_match: str
) -> None:
    user = create(client, a_user(1))
    response = client.get(f"/users/{user['id']}", headers={"If-None-Match": if_none_match})
    assert response.status_code == 304
    assert response.get_data() == b""
    assert response.headers["ETag"] == etag(1)
    assert "Content-Type" not in response.headers


def test_get_with_an_old_if_none_match_returns_the_user(client: FlaskClient) -> None:
    user = create(client, a_user(1))
    path = f"/users/{user['id']}"
    client.patch(path, json={"name": "Changed"})
    response = client.get(path, headers={"If-None-Match": etag(1)})
    assert response.status_code == 200
    assert response.json is not None
    assert (json_of(response)["name"], response.headers["ETag"]) == ("Changed", etag(2))


@pytest.mark.parametrize("if_match", [etag(1), "*", f'"5", {etag(1)}', None])
def test_patch_with_the_current_etag_or_star_or_none_proceeds(
    client: FlaskClient, if_match: str | None
) -> None:
    user = create(client, a_user(1))
    headers = {} if if_match is None else {"If-Match": if_match}
    response = client.patch(f"/users/{user['id']}", headers=headers, json={"name": "New"})
    assert response.status_code == 200
    assert response.headers["ETag"] == etag(2)


@pytest.mark.parametrize("if_match", [etag(2), f"W/{etag(1)}", '"one"', '"1x"', etag(10**30)])
def test_patch_with_any_other_if_match_is_412_and_writes_nothing(
    client: FlaskClient, if_match: str
) -> None:
    user = create(client, a_user(1))
    path = f"/users/{user['id']}"
    errors = assert_problem(
        client.patch(path, headers={"If-Match": if_match}, json={"name": "x"}), 412
    )
    assert errors == [
        {
            "index": None,
            "field": "If-Match",
            "message": "the user has changed: it is now at version 1",
        }
    ]
    assert client.get(path).json == user


def test_a_stale_if_match_after_a_change_is_412(client: FlaskClient) -> None:
    user = create(client, a_user(1))
    path = f"/users/{user['id']}"
    first = client.patch(path, headers={"If-Match": etag(1)}, json={"name": "First"})
    assert first.status_code == 200
    second = client.patch(path, headers={"If-Match": etag(1)}, json={"name": "Second"})
    errors = assert_problem(second, 412)
    assert "now at version 2" in errors[0]["message"]
    assert client.get(path).json == first.json


def test_if_match_ranks_after_invalid_fields_and_unknown_users(client: FlaskClient) -> None:
    user = create(client, a_user(1))
    stale = {"If-Match": etag(5)}
    assert_problem(client.patch(f"/users/{user['id']}", headers=stale, json={"name": ""}), 422)
    unknown = "/users/0123456789abcdef01234567"
    assert_problem(client.patch(unknown, headers=stale, json={"name": "x"}), 404)
    assert_problem(client.delete(unknown, headers=stale), 404)


def test_the_version_of_a_single_edit_goes_in_if_match(client: FlaskClient) -> None:
    user = create(client, a_user(1))
    errors = assert_problem(
        client.patch(f"/users/{user['id']}", json={"version": 1, "name": "x"}), 422
    )
    assert errors == [
        {"index": None, "field": "version", "message": "send the version as If-Match"}
    ]


def test_delete_honours_if_match(client: FlaskClient) -> None:
    first, second, third = create(client, [a_user(1), a_user(2), a_user(3)])
    path = f"/users/{first['id']}"
    client.patch(path, json={"name": "Changed"})
    errors = assert_problem(client.delete(path, headers={"If-Match": etag(1)}), 412)
    assert errors == [
        {
            "index": None,
            "field": "If-Match",
            "message": "the user has changed: it is now at version 2",
        }
    ]
    assert client.get(path).status_code == 200
    assert client.delete(path, headers={"If-Match": etag(2)}).status_code == 204
    assert client.delete(f"/users/{second['id']}", headers={"If-Match": "*"}).status_code == 204
    assert client.delete(f"/users/{third['id']}").status_code == 204
    assert user_count(client) == 0


def test_batch_items_with_a_stale_version_refuse_the_whole_batch(client: FlaskClient) -> None:
    a, b, c, d = create(client, [a_user(1), a_user(2), a_user(3), a_user(4)])
    client.patch(f"/users/{b['id']}", json={"name": "B"})
    client.patch(f"/users/{c['id']}", json={"name": "C"})
    client.patch(f"/users/{c['id']}", json={"name": "C2"})
    before = listed(client)
    edits = [
        {"id": a["id"], "version": 1, "name": "a"},
        {"id": b["id"], "version": 1, "name": "b"},
        {"id": c["id"], "version": 2, "name": "c"},
        {"id": d["id"], "name": "no version, no precondition"},
    ]
    response = client.patch("/users", json=edits)
    errors = assert_problem(response, 412)
    assert errors == [
        {"index": 1, "field": "version", "message": "the user has changed: it is now at version 2"},
        {"index": 2, "field": "version", "message": "the user has changed: it is now at version 3"},
    ]
    assert listed(client) == before
    current = [
        {"id": a["id"], "version": 1, "name": "a"},
        {"id": b["id"], "version": 2, "name": "b"},
        {"id": c["id"], "name": "c"},
        {"id": d["id"], "version": 1, "name": "d"},
    ]
    edited = json_of(client.patch("/users", json=current))
    assert [(user["name"], user["version"]) for user in edited] == [
        ("a", 2),
        ("b", 3),
        ("c", 4),
        ("d", 2),
    ]


def test_a_stale_batch_ranks_412_after_404_and_before_409(client: FlaskClient) -> None:
    a, b = create(client, [a_user(1), a_user(2)])
    client.patch(f"/users/{a['id']}", json={"name": "A"})
    stale = {"id": a["id"], "version": 1, "name": "x"}
    unknown = {"id": "0123456789abcdef01234567", "name": "x"}
    taken = {"id": b["id"], "email": "user1@example.com"}
    invalid = {"id": b["id"], "username": "?"}
    errors = assert_problem(client.patch("/users", json=[stale, unknown]), 404)
    assert fields_in(errors) == {(0, "version"), (1, "id")}
    errors = assert_problem(client.patch("/users", json=[stale, taken]), 412)
    assert fields_in(errors) == {(0, "version"), (1, "email")}
    errors = assert_problem(client.patch("/users", json=[stale, invalid]), 422)
    assert fields_in(errors) == {(0, "version"), (1, "username")}


@pytest.mark.parametrize("version", [0, -1, "1", 1.5, True, None, [1]])
def test_a_version_that_is_not_a_positive_integer_is_422(
    client: FlaskClient, version: Json
) -> None:
    user = create(client, a_user(1))
    edit = {"id": user["id"], "version": version, "name": "x"}
    errors = assert_problem(client.patch("/users", json=[edit]), 422)
    assert fields_in(errors) == {(0, "version")}
    assert client.get(f"/users/{user['id']}").json == user


def race(count: int, request: Callable[[FlaskClient], TestResponse], app: Flask) -> list[int]:
    """COUNT requests started together on their own threads; their statuses."""
    barrier = threading.Barrier(count)
    statuses: list[int] = []

    def run() -> None:
        client = keyed(app)
        barrier.wait()
        statuses.append(request(client).status_code)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


def test_of_24_concurrent_patches_with_one_if_match_exactly_one_wins(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = create(client, a_user(1))
    all_read_before_any_write(monkeypatch, "find_many", 24)  # all 24 find version 1
    path = f"/users/{user['id']}"
    counter = iter(range(24))

    def patch(racer: FlaskClient) -> TestResponse:
        name = f"Racer {next(counter)}"
        return racer.patch(path, headers={"If-Match": etag(1)}, json={"name": name})

    statuses = race(24, patch, app)
    assert sorted(statuses) == [200] + [412] * 23
    final = client.get(path).json
    assert final is not None
    assert final["version"] == 2
    assert final["name"].startswith("Racer ")


def test_24_concurrent_unconditional_patches_all_count(app: Flask, client: FlaskClient) -> None:
    user = create(client, a_user(1))
    path = f"/users/{user['id']}"
    statuses = race(24, lambda racer: racer.patch(path, json={"name": "Racer"}), app)
    assert statuses == [200] * 24
    final = client.get(path).json
    assert final is not None
    assert final["version"] == 25


def concurrent_edit(
    app: Flask, monkeypatch: pytest.MonkeyPatch, user_id: str, times: int = 1
) -> None:
    """Another request edits USER_ID each time a batch has read its users, TIMES times."""
    read = UserStore.find_many
    left = [times]

    def find_then_change(self: UserStore, ids: Any) -> Any:
        found = read(self, ids)
        if left[0] > 0:
            left[0] -= 1
            oid = usersapi.to_object_id(user_id)
            store_of(app).users().update_one(
                {"_id": oid},
                {
                    "$set": {"name": "Concurrent", "updated_at": usersapi.now()},
                    "$inc": {"version": 1},
                },
            )
        return found

    monkeypatch.setattr(UserStore, "find_many", find_then_change)


def test_a_batch_that_loses_a_race_part_way_is_undone_and_412(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = create(client, [a_user(1), a_user(2)])
    concurrent_edit(app, monkeypatch, b["id"])
    edits = [{"id": a["id"], "name": "Batch"}, {"id": b["id"], "version": 1, "email": "b@x.io"}]
    errors = assert_problem(client.patch("/users", json=edits), 412)
    assert errors == [
        {"index": 1, "field": "version", "message": "the user has changed: it is now at version 2"}
    ]
    assert client.get(f"/users/{a['id']}").json == a
    # The undo never touches the concurrent write, though it is at the version the batch wrote.
    concurrent = client.get(f"/users/{b['id']}").json
    assert concurrent is not None
    assert (concurrent["name"], concurrent["email"], concurrent["version"]) == (
        "Concurrent",
        b["email"],
        2,
    )


def test_an_unconditional_batch_that_loses_a_race_is_applied_on_top(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = create(client, [a_user(1), a_user(2)])
    concurrent_edit(app, monkeypatch, b["id"])
    edits = [{"id": a["id"], "name": "Batch"}, {"id": b["id"], "email": "b@x.io"}]
    response = client.patch("/users", json=edits)
    assert response.status_code == 200
    edited_b = client.get(f"/users/{b['id']}").json
    assert edited_b is not None
    assert (edited_b["name"], edited_b["email"], edited_b["version"]) == ("Concurrent", "b@x.io", 3)
    assert response.json is not None
    assert json_of(response)[1] == edited_b
    assert json_of(client.get(f"/users/{a['id']}"))["version"] == 2


def test_a_batch_that_keeps_losing_races_gives_up_with_409(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = create(client, [a_user(1), a_user(2)])
    concurrent_edit(app, monkeypatch, b["id"], times=usersapi.EDIT_ATTEMPTS)
    edits = [{"id": a["id"], "name": "Batch"}, {"id": b["id"], "email": "b@x.io"}]
    response = client.patch("/users", json=edits)
    assert_problem(response, 409)
    assert response.json is not None
    assert "kept changing" in json_of(response)["detail"]
    assert client.get(f"/users/{a['id']}").json == a
    assert json_of(client.get(f"/users/{b['id']}"))["version"] == 1 + usersapi.EDIT_ATTEMPTS


# --------------------------------------------------------------------------------------
# MongoDB down, refused credentials, proxy headers
# --------------------------------------------------------------------------------------


@pytest.fixture
def unreachable_db() -> FlaskClient:
    uri = f"mongodb://127.0.0.1:{free_port()}/"
    settings = Settings(
        mongo_uri=uri,
        mongo_timeout_ms=300,
        mongo_op_timeout_ms=300,
        mongo_password="pw-not-shown",
        api_keys=TEST_KEYS,
    )
    return keyed(create_app(settings))


@pytest.mark.parametrize(("method", "path", "body"), [("GET", "/ready", None), *DATA_REQUESTS])
def test_database_down_is_503_within_the_timeout(
    unreachable_db: FlaskClient, method: str, path: str, body: Json
) -> None:
    started = time.monotonic()
    response = unreachable_db.open(path, method=method, json=body)
    assert time.monotonic() - started < 5  # a bounded answer, not a hang
    assert_problem(response, 503)
    assert "pw-not-shown" not in response.get_data(as_text=True)


def test_health_answers_while_the_database_is_down(unreachable_db: FlaskClient) -> None:
    assert unreachable_db.get("/health").json == {"status": "ok"}


def test_refused_credentials_are_503_without_the_password(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(_self: UserStore) -> None:
        raise OperationFailure("Authentication failed.", code=18)

    monkeypatch.setattr(UserStore, "users", refuse)
    response = client.get("/users")
    assert_problem(response, 503)
    assert "MongoDB refused the credentials (code 18)" in caplog.text
    text = client.get("/metrics").get_data(as_text=True)
    assert metric(text, "usersapi_mongodb_errors_total", kind="credentials_refused") == 1


def test_any_other_mongodb_failure_is_500_counted_by_its_name(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(_self: UserStore) -> None:
        raise OperationFailure("Sort exceeded memory limit", code=292)

    monkeypatch.setattr(UserStore, "users", fail)
    assert_problem(client.get("/users"), 500)
    text = client.get("/metrics").get_data(as_text=True)
    assert metric(text, "usersapi_mongodb_errors_total", kind="OperationFailure") == 1


# --------------------------------------------------------------------------------------
# Time limits: a MongoDB that accepts and then never answers
# --------------------------------------------------------------------------------------

OP_QUERY, OP_REPLY, OP_MSG = 2004, 1, 2013
HELLO_REPLY = {
    "ismaster": True,
    "isWritablePrimary": True,
    "helloOk": True,
    "maxWireVersion": 21,
    "minWireVersion": 0,
    "maxBsonObjectSize": 16 * 1024 * 1024,
    "maxMessageSizeBytes": 48_000_000,
    "maxWriteBatchSize": 100_000,
    "logicalSessionTimeoutMinutes": 30,
    "ok": 1.0,
}


class StallingMongo:
    """A server of MongoDB's wire protocol that answers the handshake and the monitors'
    hello, then never answers anything else: a database that does not answer in time."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.stalled = 0
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                while header := self.read(conn, 16):
                    length, request_id, _, opcode = struct.unpack("<iiii", header)
                    body = self.read(conn, length - 16)
                    command = self.command(opcode, body)
                    if not ({"hello", "ismaster", "isMaster"} & set(command)):
                        self.stalled += 1
                        continue  # never answered
                    conn.sendall(self.reply(opcode, request_id, HELLO_REPLY))
            except OSError:
                return

    @staticmethod
    def read(conn: socket.socket, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = conn.recv(size - len(data))
            if not chunk:
                return b""
            data += chunk
        return data

    @staticmethod
    def command(opcode: int, body: bytes) -> dict[str, Any]:
        if opcode == OP_QUERY:  # flags, collection name (C string), skip, limit, query
            name_end = body.index(b"\0", 4)
            document: dict[str, Any] = bson.decode(body[name_end + 9 :], codec_options=None)
            return document
        # OP_MSG: flags, then section kind 0 holds the command document
        size = struct.unpack("<i", body[5:9])[0]
        return dict(bson.decode(body[5 : 5 + size]))

    @staticmethod
    def reply(opcode: int, request_id: int, document: dict[str, Any]) -> bytes:
        payload = bson.encode(document)
        if opcode == OP_QUERY:
            body = struct.pack("<iqii", 0, 0, 0, 1) + payload
            reply_op = OP_REPLY
        else:
            body = struct.pack("<iB", 0, 0) + payload
            reply_op = OP_MSG
        return struct.pack("<iiii", 16 + len(body), 0, request_id, reply_op) + body

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def stalling_db() -> Iterator[tuple[FlaskClient, StallingMongo]]:
    server = StallingMongo()
    settings = Settings(
        mongo_uri=f"mongodb://127.0.0.1:{server.port}/?directConnection=true",
        mongo_op_timeout_ms=400,
        api_keys=TEST_KEYS,
    )
    yield keyed(create_app(settings)), server
    server.close()


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/users", None),
        ("GET", "/users/0123456789abcdef01234567", None),
        ("POST", "/users", a_user(1)),
        ("GET", "/ready", None),
    ],
)
def test_a_database_that_does_not_answer_in_time_is_503_with_retry_after(
    stalling_db: tuple[FlaskClient, StallingMongo],
    json_logs: Callable[[], list[Json]],
    method: str,
    path: str,
    body: Json,
) -> None:
    client, server = stalling_db
    started = time.monotonic()
    response = client.open(path, method=method, json=body, headers={"X-Request-ID": "slow-1"})
    elapsed = time.monotonic() - started
    assert_problem(response, 503)
    assert json_of(response)["detail"] == "the database did not answer in time; try again shortly"
    assert response.headers["Retry-After"] == "5"
    assert server.stalled >= 1  # the request did reach the database, which never answered
    assert 0.3 < elapsed < 3, elapsed  # MONGO_OP_TIMEOUT_MS (0.4 s), not the 5 s defaults
    warnings = [line for line in json_logs() if line["level"] == "WARNING"]
    assert [(w["request_id"], w["message"]) for w in warnings] == [
        ("slow-1", "MongoDB did not answer within MONGO_OP_TIMEOUT_MS: NetworkTimeout")
    ]


def test_the_time_limit_is_per_request_and_the_worker_goes_on(
    stalling_db: tuple[FlaskClient, StallingMongo],
) -> None:
    client, _ = stalling_db
    for _ in range(3):  # each request gets a fresh deadline, none inherits a spent one
        started = time.monotonic()
        assert client.get("/users").status_code == 503
        assert time.monotonic() - started > 0.3
    assert client.get("/health").status_code == 200


def test_openapi_reports_the_images_version_else_the_codes() -> None:
    env = {"MONGO_URI": usersapi.IN_MEMORY_URI}
    default = create_app(Settings.from_env(env)).test_client().get("/openapi.json")
    assert json_of(default)["info"]["version"] == usersapi.__version__
    image = create_app(Settings.from_env({**env, "USERSAPI_VERSION": "1.1.1"}))
    assert json_of(image.test_client().get("/openapi.json"))["info"]["version"] == "1.1.1"


def test_the_operation_time_limit_is_a_setting() -> None:
    env = {"MONGO_URI": "mongodb://db/", "MONGO_OP_TIMEOUT_MS": "1500"}
    assert Settings.from_env(env).mongo_op_timeout_ms == 1500
    assert Settings.from_env({"MONGO_URI": "mongodb://db/"}).mongo_op_timeout_ms == 5000
    with pytest.raises(ConfigError, match="MONGO_OP_TIMEOUT_MS must be a whole number"):
        Settings.from_env({**env, "MONGO_OP_TIMEOUT_MS": "soon"})


# --------------------------------------------------------------------------------------
# Restores: the users are out of reach while a restore holds the lock
# --------------------------------------------------------------------------------------


def lock_restore(app: Flask, seconds: float) -> None:
    database = store_of(app).client()["usersdb"]
    expires = datetime.now(UTC) + timedelta(seconds=seconds)
    database["restore_lock"].insert_one(
        {"_id": "restore", "started_at": datetime.now(UTC), "expires_at": expires}
    )


def release_restore(app: Flask) -> None:
    store_of(app).client()["usersdb"].drop_collection("restore_lock")


@pytest.fixture
def fresh_lock_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every request reads the lock anew (in production at most once a second)."""
    monkeypatch.setattr(usersapi, "LOCK_POLL_SECONDS", 0.0)


@pytest.mark.usefixtures("fresh_lock_reads")
@pytest.mark.parametrize(("method", "path", "body"), DATA_REQUESTS)
def test_while_a_restore_holds_the_lock_users_get_503_and_nothing_changes(
    app: Flask, client: FlaskClient, method: str, path: str, body: Json
) -> None:
    create(client, a_user(1))
    lock_restore(app, 60)
    response = client.open(path, method=method, json=body)
    assert_problem(response, 503)
    assert response.headers["Retry-After"] == "5"
    assert "restored from a backup" in json_of(response)["detail"]
    assert client.get("/health").status_code == 200
    assert client.get("/openapi.json").status_code == 200
    release_restore(app)
    assert [user["email"] for user in listed(client)] == ["user1@example.com"]


@pytest.mark.usefixtures("fresh_lock_reads")
def test_an_expired_lock_is_ignored(app: Flask, client: FlaskClient) -> None:
    lock_restore(app, -1)
    assert client.get("/users").status_code == 200


def test_the_lock_is_read_at_most_once_per_poll_interval(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert usersapi.LOCK_POLL_SECONDS == 1.0
    monkeypatch.setattr(usersapi, "LOCK_POLL_SECONDS", 0.3)
    assert client.get("/users").status_code == 200
    lock_restore(app, 60)
    assert client.get("/users").status_code == 200  # within the interval: not read again
    time.sleep(0.35)
    assert client.get("/users").status_code == 503


@pytest.mark.usefixtures("fresh_lock_reads")
def test_the_index_is_ensured_once_while_no_restore_runs(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    collection_class = type(store_of(app).client()["usersdb"]["users"])
    made: list[str] = []
    real = collection_class.create_index

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        made.append(self.name)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(collection_class, "create_index", counted)
    for _ in range(3):  # the lock is read for each of them
        assert client.get("/users").status_code == 200
    assert made == ["users"]


@pytest.mark.usefixtures("fresh_lock_reads")
def test_after_a_restore_the_unique_email_index_is_ensured_again(
    app: Flask, client: FlaskClient
) -> None:
    create(client, a_user(1))
    lock_restore(app, 60)
    assert client.get("/users").status_code == 503
    # The restore replaced the collection with one that has no unique index.
    users = store_of(app).client()["usersdb"]["users"]
    docs = list(users.find())
    users.drop()
    users.insert_many(docs)
    release_restore(app)
    response = client.post("/users", json=a_user(2, email="user1@example.com"))
    assert_problem(response, 409)
    indexes = users.index_information()
    assert indexes["email_unique"]["unique"] is True


def test_one_proxy_hop_is_trusted(app: Flask) -> None:
    @app.get("/whoami")
    def whoami() -> dict[str, str]:
        return {"addr": str(request.remote_addr), "scheme": request.scheme, "host": request.host}

    headers = {
        "X-Forwarded-For": "6.6.6.6, 203.0.113.9",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "api.example.org",
    }
    seen = app.test_client().get("/whoami", headers=headers).json
    assert seen == {"addr": "203.0.113.9", "scheme": "https", "host": "api.example.org"}


# --------------------------------------------------------------------------------------
# Request ids, logs and metrics
# --------------------------------------------------------------------------------------

ACCESS_LINE_FIELDS = {
    "key",
    "time",
    "level",
    "logger",
    "message",
    "request_id",
    "method",
    "path",
    "route",
    "status",
    "duration_ms",
    "client",
}


@pytest.fixture
def json_logs(caplog: pytest.LogCaptureFixture) -> Callable[[], list[Json]]:
    """Everything logged from here on at INFO and above, as the app's JSON lines."""
    caplog.set_level("INFO")
    caplog.handler.setFormatter(telemetry.JsonFormatter())

    def lines() -> list[Json]:
        return [json.loads(line) for line in caplog.text.splitlines()]

    return lines


def access_lines(lines: list[Json]) -> list[Json]:
    return [line for line in lines if line["logger"] == "usersapi.access"]


def test_a_sane_request_id_is_echoed(client: FlaskClient) -> None:
    sent = "Trace-0123456789_abc.def-" + "x" * 100  # 125 characters
    assert client.get("/health", headers={"X-Request-ID": sent}).headers["X-Request-ID"] == sent


@pytest.mark.parametrize(
    "sent",
    [None, "", "a" * 129, "has space", "semi;colon", "new\\nline", "ünïcode", "<script>"],
)
def test_an_absent_or_insane_request_id_is_replaced_by_a_new_one(
    client: FlaskClient, sent: str | None
) -> None:
    headers = {} if sent is None else {"X-Request-ID": sent}
    ids = {client.get("/health", headers=headers).headers["X-Request-ID"] for _ in range(3)}
    assert len(ids) == 3  # a fresh one each time
    for request_id in ids:
        assert request_id != sent
        assert re.fullmatch(r"[0-9a-f]{32}", request_id)


def test_errors_carry_a_request_id_too(client: FlaskClient) -> None:
    response = client.get("/nowhere", headers={"X-Request-ID": "lost-1"})
    assert_problem(response, 404)
    assert response.headers["X-Request-ID"] == "lost-1"


def test_each_request_is_one_json_log_line_with_its_fields(
    client: FlaskClient, json_logs: Callable[[], list[Json]]
) -> None:
    created = create(client, a_user(1))
    client.get(f"/users/{created['id']}", headers={"X-Request-ID": "req-42"})
    client.get("/nowhere")
    lines = json_logs()
    accessed = access_lines(lines)
    assert len(accessed) == 3
    for line in accessed:
        assert set(line) == ACCESS_LINE_FIELDS
        assert line["level"] == "INFO"
        assert line["client"] == "127.0.0.1"
        assert isinstance(line["duration_ms"], float)
        assert line["duration_ms"] >= 0
        datetime.fromisoformat(line["time"])
    post, get, unknown = accessed
    assert (post["method"], post["path"], post["route"], post["status"]) == (
        "POST",
        "/users",
        "/users",
        201,
    )
    assert get["request_id"] == "req-42"
    assert get["path"] == f"/users/{created['id']}"
    assert get["route"] == "/users/<userid:user_id>"  # the template, not the id
    assert (unknown["route"], unknown["status"]) == ("<unmatched>", 404)
    assert len({line["request_id"] for line in accessed}) == 3


def test_the_access_line_names_the_client_behind_the_proxy(
    client: FlaskClient, json_logs: Callable[[], list[Json]]
) -> None:
    client.get("/health", headers={"X-Forwarded-For": "6.6.6.6, 203.0.113.9"})
    (line,) = access_lines(json_logs())
    assert line["client"] == "203.0.113.9"


def test_database_warnings_carry_the_request_id(
    unreachable_db: FlaskClient, json_logs: Callable[[], list[Json]]
) -> None:
    response = unreachable_db.get("/users", headers={"X-Request-ID": "db-down-1"})
    assert_problem(response, 503)
    lines = json_logs()
    warning = next(line for line in lines if line["level"] == "WARNING")
    assert warning["message"] == "MongoDB unreachable: ServerSelectionTimeoutError"
    assert warning["request_id"] == "db-down-1"
    assert access_lines(lines)[0]["request_id"] == "db-down-1"


def test_an_unexpected_error_logs_its_traceback_under_the_request_id(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch, json_logs: Callable[[], list[Json]]
) -> None:
    def broken(*_args: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(UserStore, "page", broken)
    assert_problem(client.get("/users", headers={"X-Request-ID": "boom-1"}), 500)
    lines = json_logs()
    (error,) = [line for line in lines if line["level"] == "ERROR"]
    assert error["request_id"] == "boom-1"
    assert "Traceback" in error["exception"]
    assert "RuntimeError: boom" in error["exception"]
    assert [line["status"] for line in access_lines(lines)] == [500]


def test_no_secret_reaches_any_log_line(json_logs: Callable[[], list[Json]]) -> None:
    password, cookie = "Pa55-in-the-URI", "session-3f9a7c"
    uri = f"mongodb://app:{password}@127.0.0.1:{free_port()}/"
    env = {"MONGO_URI": uri, "MONGO_OP_TIMEOUT_MS": "300", "API_KEYS": KEY_LINES}
    http = create_app(Settings.from_env(env)).test_client()
    headers = {**bearer(WRITE_KEY), "Cookie": f"session={cookie}"}
    assert_problem(http.get("/users", headers=headers), 503)
    assert_problem(http.post("/users", json=a_user(1), headers=bearer(READ_KEY)), 403)
    assert_problem(http.get("/users", headers=bearer(WRITE_KEY[:-1])), 401)
    assert http.get("/health", headers=headers).status_code == 200
    lines = json_logs()
    assert {line["level"] for line in lines} >= {"INFO", "WARNING"}
    logged = json.dumps(lines)
    assert "app:***@127.0.0.1" in logged  # the URI is logged, its password is not
    assert password not in logged
    assert cookie not in logged
    for key in (WRITE_KEY, READ_KEY):  # neither a key, nor any part of one, nor its digest
        assert key[len(usersapi_keys.KEY_PREFIX) :][:12] not in logged
        assert usersapi_keys.digest_of(key).hex() not in logged
    assert [line["key"] for line in access_lines(lines)] == ["writer", "reader", None, None]


def test_no_request_body_reaches_the_logs(
    client: FlaskClient, json_logs: Callable[[], list[Json]]
) -> None:
    created = create(client, [a_user(1, name="Body Name"), a_user(2)])
    client.patch("/users", json=[{"id": created[0]["id"], "email": "edited@example.com"}])
    client.post("/users", json=[a_user(3, email="bad")])  # a refusal names fields, not values
    client.get("/users/search?q=secret-search-term")
    logged = json.dumps(json_logs())
    for value in ("user1@example.com", "Body Name", "edited@example.com", "secret-search-term"):
        assert value not in logged


def test_log_level_warning_drops_the_access_lines(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    app = create_app(in_memory(log_level="WARNING"))
    keyed(app).get("/users")
    assert_problem(keyed(app, "nope").get("/users"), 401)
    records = [(r.name, r.levelname) for r in caplog.records]
    assert ("usersapi.access", "INFO") not in records
    assert ("usersapi", "WARNING") in records
    keyed(create_app(in_memory(log_level="INFO"))).get("/users")
    assert ("usersapi.access", "INFO") in [(r.name, r.levelname) for r in caplog.records]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT must be one of json, text, got 'xml'"),
    ],
)
def test_a_bad_log_setting_is_a_configuration_error(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        Settings.from_env({"MONGO_URI": "mongomock://", **env})
    assert Settings.from_env({"MONGO_URI": "mongomock://", "LOG_LEVEL": "warning"}).log_level == (
        "WARNING"
    )


@pytest.mark.process
def test_gunicorn_reads_the_log_settings_by_the_apps_rules(tmp_path: Path) -> None:
    def conf(**env: str) -> subprocess.CompletedProcess[str]:
        show = "import runpy; c = runpy.run_path('gunicorn.conf.py'); "
        show += "print(c['loglevel'], c['LOG_SETTINGS'].log_format)"
        environment = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), **env}
        command = [sys.executable, "-c", show]
        return subprocess.run(  # noqa: S603
            command, cwd=HERE, env=environment, capture_output=True, text=True, check=False
        )

    assert conf(LOG_LEVEL=" warning ", LOG_FORMAT="TEXT").stdout == "warning text\n"
    refused = conf(LOG_LEVEL="loud")
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        "gunicorn.conf.py: LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, "
        "got 'LOUD'"
    )
    assert "LOG_FORMAT must be one of json, text, got 'xml'" in conf(LOG_FORMAT="xml").stderr


def test_text_logs_for_the_development_server(caplog: pytest.LogCaptureFixture) -> None:
    assert Settings.from_env({"MONGO_URI": "mongomock://"}).log_format == "json"
    settings = Settings.from_env({"MONGO_URI": "mongomock://", "LOG_FORMAT": "text"})
    caplog.set_level("INFO")
    caplog.handler.setFormatter(telemetry.log_formatter(settings.log_format))
    create_app(settings).test_client().get("/health", headers={"X-Request-ID": "txt-1"})
    assert re.search(r" INFO usersapi.access \[txt-1\] GET /health 200 [0-9.]+ ms$", caplog.text)
    with pytest.raises(ConfigError, match="LOG_FORMAT must be one of json, text"):
        Settings.from_env({"MONGO_URI": "mongomock://", "LOG_FORMAT": "xml"})


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of a Prometheus text exposition, 0 when it is absent."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def test_metrics_count_requests_by_route_template_and_status(app: Flask) -> None:
    client = keyed(app)
    users = create(client, [a_user(1), a_user(2), a_user(3)])
    for user in users:
        client.get(f"/users/{user['id']}")
    client.get("/users/0123456789abcdef01234567")
    client.get("/no/such/0123456789abcdef01234567")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    text = response.get_data(as_text=True)
    by_id = "/users/<userid:user_id>"
    requests = "usersapi_http_requests_total"
    assert metric(text, requests, method="GET", route=by_id, status="200") == 3
    assert metric(text, requests, method="GET", route=by_id, status="404") == 1
    assert metric(text, requests, method="POST", route="/users", status="201") == 1
    assert metric(text, requests, method="GET", route="<unmatched>", status="404") == 1
    assert users[0]["id"] not in text  # never a raw path
    count = "usersapi_http_request_duration_seconds_count"
    assert metric(text, count, method="GET", route=by_id) == 4
    assert metric(text, "usersapi_batch_size_count", operation="create") == 1
    assert metric(text, "usersapi_batch_size_sum", operation="create") == 3
    client.patch(f"/users/{users[0]['id']}", json={"name": "x"})  # not a batch: not counted
    client.patch("/users", json={"id": users[0]["id"], "name": "y"})  # a batch of one
    text = client.get("/metrics").get_data(as_text=True)
    assert metric(text, "usersapi_batch_size_count", operation="edit") == 1
    assert metric(text, "usersapi_batch_size_sum", operation="edit") == 1


def test_metrics_count_database_errors_by_kind(unreachable_db: FlaskClient) -> None:
    unreachable_db.get("/users")
    unreachable_db.get("/ready")
    text = unreachable_db.get("/metrics").get_data(as_text=True)
    assert metric(text, "usersapi_mongodb_errors_total", kind="unreachable") == 2


def test_metrics_count_unknown_methods_under_one_label(client: FlaskClient) -> None:
    client.open("/users", method="BREW")
    text = client.get("/metrics").get_data(as_text=True)
    assert (
        metric(
            text, "usersapi_http_requests_total", method="OTHER", route="<unmatched>", status="405"
        )
        == 1
    )


HERE = Path(__file__).parent


def start_gunicorn(
    port: int, env: dict[str, str], log: Path, *args: str
) -> subprocess.Popen[bytes]:
    """gunicorn with the project's gunicorn.conf.py, as the image runs it, its log in LOG
    (a file: a pipe nobody reads while it runs would fill and stop the workers)."""
    command = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"]
    command += ["--bind", f"127.0.0.1:{port}", *args]
    with log.open("wb") as stderr:
        return subprocess.Popen(  # noqa: S603 - this interpreter and the test's own arguments
            command, env=env, cwd=HERE, stderr=stderr
        )


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def wait_until_up(port: int) -> int:
    """Polls /health until it answers; the number of polls that reached the app."""
    for _ in range(150):
        try:
            get(port, "/health")
        except OSError:
            time.sleep(0.1)
        else:
            return 1
    raise AssertionError("gunicorn did not start")


def worker_pids_with_metrics(metrics_dir: Path, kind: str = "counter") -> set[str]:
    """The pids of the workers that wrote metrics files of KIND (prometheus_client's
    KIND_PID.db)."""
    return {path.stem.rsplit("_", 1)[1] for path in metrics_dir.glob(f"{kind}_*.db")}


@pytest.mark.process
def test_metrics_are_summed_over_two_gunicorn_workers(tmp_path: Path) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    stale = metrics_dir / "counter_999999.db"  # left by an earlier run: gunicorn removes it
    stale.write_bytes(b"not a metrics file")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MONGO_", "LOG_"))}
    env.update(MONGO_URI="mongomock://", PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    port = free_port()
    log = tmp_path / "gunicorn.log"
    server = start_gunicorn(port, env, log, "--workers", "2", "--threads", "2")
    try:
        sent = wait_until_up(port)
        assert not stale.exists()
        # Concurrent connections until both workers have answered some of them.
        with ThreadPoolExecutor(max_workers=8) as pool:
            while len(worker_pids_with_metrics(metrics_dir)) < 2 and sent < 2000:
                answers = list(pool.map(lambda _: get(port, "/health")[0], range(40)))
                assert answers == [200] * 40
                sent += 40
        assert len(worker_pids_with_metrics(metrics_dir)) == 2
        status, text = get(port, "/metrics")
        assert status == 200
        labels = {"method": "GET", "route": "/health", "status": "200"}
        assert metric(text, "usersapi_http_requests_total", **labels) == sent
        assert metric(text, "usersapi_workers") == 2
        # A worker that dies keeps its share: the counters never go back. Once gunicorn has
        # replaced it, the workers serving are two again, not three (child_exit).
        killed = min(worker_pids_with_metrics(metrics_dir))
        os.kill(int(killed), signal.SIGKILL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            get(port, "/metrics")  # the new worker counts itself when it has made its app
            live = worker_pids_with_metrics(metrics_dir, "gauge_livesum")
            if killed not in live and len(live) == 2:
                break
            time.sleep(0.2)
        status, text = get(port, "/metrics")
        assert status == 200
        assert metric(text, "usersapi_http_requests_total", **labels) >= sent
        assert metric(text, "usersapi_workers") == 2
    finally:
        server.terminate()
        server.wait(timeout=30)
    stderr = log.read_text(encoding="utf-8")
    # gunicorn's own lines and the app's are all JSON; the app's access line replaces
    # gunicorn's access log.
    lines = [json.loads(line) for line in stderr.splitlines()]
    booted = [line for line in lines if line["message"].startswith("Booting worker")]
    assert len(booted) >= 2  # a third once the killed worker is replaced
    assert {line["logger"] for line in booted} == {"gunicorn.error"}
    accessed = access_lines(lines)
    routes = [line["route"] for line in accessed]
    assert routes.count("/health") == sent
    assert set(routes) == {"/health", "/metrics"}


@pytest.mark.process
def test_gunicorn_refuses_a_bad_setting_before_it_starts(tmp_path: Path) -> None:
    env = {**os.environ, "MONGO_URI": "mongomock://", "GUNICORN_THREADS": "many"}
    env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "metrics")
    log = tmp_path / "gunicorn.log"
    server = start_gunicorn(free_port(), env, log)
    server.wait(timeout=30)
    stderr = log.read_text(encoding="utf-8")
    assert server.returncode != 0
    assert "GUNICORN_THREADS must be a whole number of at least 1, got 'many'" in stderr
    assert not (tmp_path / "metrics").exists()


# --------------------------------------------------------------------------------------
# Database round trips per batch
# --------------------------------------------------------------------------------------


class CountingCollection:
    """Wraps a collection and counts the calls that reach the database."""

    CALLS = ("find", "find_one", "insert_many", "bulk_write", "count_documents", "delete_many")

    def __init__(self, collection: Any) -> None:
        self.collection = collection
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.collection, name)
        if name not in self.CALLS:
            return attribute

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return attribute(*args, **kwargs)

        return counted


@pytest.fixture
def counted(app: Flask, monkeypatch: pytest.MonkeyPatch) -> CountingCollection:
    counter = CountingCollection(store_of(app).users())
    monkeypatch.setattr(UserStore, "users", lambda _self: counter)
    return counter


def count_round_trips(counter: CountingCollection, call: Callable[[], TestResponse]) -> int:
    counter.calls.clear()
    response = call()
    assert response.status_code in {200, 201}, response.json
    return len(counter.calls)


def test_a_1000_user_batch_takes_a_constant_number_of_round_trips(
    client: FlaskClient, counted: CountingCollection
) -> None:
    users = [a_user(n) for n in range(1000)]
    trips = count_round_trips(counted, lambda: client.post("/users", json=users))
    assert counted.calls == ["find", "insert_many"]
    assert trips == 2
    created = listed(client, "?limit=500") + listed(client, "?limit=500&offset=500")
    edits = [{"id": user["id"], "email": f"new{n}@x.io"} for n, user in enumerate(created)]
    assert len(edits) == 1000
    trips = count_round_trips(counted, lambda: client.patch("/users", json=edits))
    assert counted.calls == ["find", "find", "bulk_write"]
    assert trips == 3
    assert user_count(client) == 1000


# --------------------------------------------------------------------------------------
# Property-based: the app against its own OpenAPI document
# --------------------------------------------------------------------------------------

fuzz_app = create_app(in_memory(max_batch=20))
FUZZ_CHECKS = {
    # Invalid input is refused with these statuses (413: a batch over MAX_BATCH).
    # 401: a request without its key (schemathesis drops the Authorization header too).
    "negative_data_rejection": {
        "expected-statuses": ["400", "401", "404", "405", "413", "415", "422"]
    },
    # JSON Schema's "email" format is wider than the API's rule: addresses at reserved
    # domains such as .test or .invalid match the format and are refused with a 422.
    "positive_data_acceptance": {"enabled": False},
}
# The write key for every operation, as the document's security scheme says to send it.
FUZZ_AUTH = {"openapi": {"bearerAuth": {"bearer": WRITE_KEY}}}
fuzz_config = schemathesis.config.SchemathesisConfig.from_dict(
    {"checks": FUZZ_CHECKS, "auth": FUZZ_AUTH}
)
schema = schemathesis.openapi.from_wsgi("/openapi.json", fuzz_app, config=fuzz_config)


@schema.parametrize()
def test_the_api_honours_its_openapi_document(case: schemathesis.Case[Any]) -> None:
    case.call_and_validate()


@pytest.fixture(autouse=True)
def no_leftover_users() -> Iterator[None]:
    yield
    fuzz_app.extensions["usersapi.store"].users().delete_many({})
