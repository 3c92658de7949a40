"""Throughput of the users API through gunicorn, and database round trips per batch.

    tox -e bench                                   # in-memory store, one worker
    BENCH_MONGO_URI=mongodb://... tox -e bench      # against a real MongoDB

Prints figures; it asserts nothing about speed. With the in-memory store (mongomock) the
figures measure the API and gunicorn, not a database.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from pymongo.collection import Collection

import usersapi
from test_usersapi import CountingCollection, free_port

HERE = Path(__file__).parent
REQUESTS = int(os.environ.get("BENCH_REQUESTS", "2000"))
SEARCHES = int(os.environ.get("BENCH_SEARCHES", "300"))
BATCHES = int(os.environ.get("BENCH_BATCHES", "5"))
BATCH_SIZE = 1000


def start_gunicorn(port: int, mongo_uri: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "MONGO_URI": mongo_uri, "LOG_LEVEL": "WARNING"}
    # The in-memory store lives in one process, so it gets exactly one worker.
    workers = os.environ.get("BENCH_WORKERS", "1" if mongo_uri == usersapi.IN_MEMORY_URI else "2")
    command = [
        sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}",
        "--workers", workers, "--log-level", "warning", "usersapi:create_app()",
    ]  # fmt: skip
    server = subprocess.Popen(command, env=env, cwd=HERE)
    for _ in range(100):
        try:
            if call(port, "GET", "/health")[0] == 200:
                return server
        except OSError:
            time.sleep(0.1)
    server.kill()
    sys.exit("gunicorn did not start")


def call(port: int, method: str, path: str, body: object = None) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        payload = None if body is None else json.dumps(body)
        headers = {} if body is None else {"Content-Type": "application/json"}
        connection.request(method, path, payload, headers)
        response = connection.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data else None
    finally:
        connection.close()


def users(count: int) -> list[dict[str, str]]:
    run = uuid.uuid4().hex[:8]
    return [
        {"name": f"Bench {n}", "email": f"b{n}.{run}@example.com", "username": f"b{n}_{run}"}
        for n in range(count)
    ]


def rate(label: str, count: int, unit: str, action: Callable[[], None]) -> None:
    started = time.perf_counter()
    for _ in range(count):
        action()
    elapsed = time.perf_counter() - started
    print(f"{label:<34} {count / elapsed:>10.1f} {unit}/s  ({count} in {elapsed:.2f} s)")


def expect(status: int, answer: tuple[int, Any]) -> None:
    if answer[0] != status:
        sys.exit(f"unexpected answer {answer[0]}: {answer[1]}")


def throughput(mongo_uri: str) -> None:
    port = free_port()
    server = start_gunicorn(port, mongo_uri)
    try:
        status, created = call(port, "POST", "/users", users(BATCH_SIZE))
        expect(201, (status, created))
        user_path = f"/users/{created[0]['id']}"
        rate("GET /users/<id>", REQUESTS, "req", lambda: expect(200, call(port, "GET", user_path)))
        search = "/users/search?q=bench+9&limit=20"
        rate("GET /users/search", SEARCHES, "req", lambda: expect(200, call(port, "GET", search)))
        rate(
            f"POST /users ({BATCH_SIZE} users a batch)",
            BATCHES,
            "batch",
            lambda: expect(201, call(port, "POST", "/users", users(BATCH_SIZE))),
        )
    finally:
        server.terminate()
        server.wait(timeout=10)


def round_trips() -> None:
    """Database calls one batch makes, counted in process on the in-memory store."""
    app = usersapi.create_app(usersapi.Settings(mongo_uri=usersapi.IN_MEMORY_URI))
    store: usersapi.UserStore = app.extensions["usersapi.store"]
    counter = CountingCollection(store.users())
    as_collection = cast("Collection[usersapi.Document]", counter)
    store.users = lambda: as_collection  # type: ignore[method-assign]
    client = app.test_client()
    created = client.post("/users", json=users(BATCH_SIZE)).json or []
    print(f"round trips, create of {BATCH_SIZE} users   {len(counter.calls):>4}  {counter.calls}")
    counter.calls.clear()
    edits = [{"id": user["id"], "email": f"edited.{user['email']}"} for user in created]
    client.patch("/users", json=edits)
    print(f"round trips, edit of {BATCH_SIZE} users     {len(counter.calls):>4}  {counter.calls}")


def main() -> None:
    mongo_uri = os.environ.get("BENCH_MONGO_URI", usersapi.IN_MEMORY_URI)
    print(f"usersapi benchmark: gunicorn, {usersapi.Settings(mongo_uri=mongo_uri).describe()}")
    throughput(mongo_uri)
    round_trips()


if __name__ == "__main__":
    main()
