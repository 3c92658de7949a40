"""Throughput of the users API through gunicorn, sync against gthread workers while the
database is slow, and database round trips per batch.

    tox -e bench                                   # in-memory store
    BENCH_MONGO_URI=mongodb://... tox -e bench      # against a real MongoDB
    BENCH_DB_LATENCY_MS=0 tox -e bench              # no simulated database latency

Prints figures; it asserts nothing about speed. With the in-memory store (mongomock) the
figures measure the API and gunicorn, not a database. For the workers' comparison every
database call of the in-memory store first sleeps BENCH_DB_LATENCY_MS (default 10 ms), as
a call over the network to a busy MongoDB waits, so the figures show what a worker does
while it waits. The delay lives in this module (latency_app), not in the product.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from flask import Flask
from pymongo.collection import Collection

import usersapi

HERE = Path(__file__).parent
REQUESTS = int(os.environ.get("BENCH_REQUESTS", "2000"))
SEARCHES = int(os.environ.get("BENCH_SEARCHES", "300"))
BATCHES = int(os.environ.get("BENCH_BATCHES", "5"))
BATCH_SIZE = 1000
DB_LATENCY_MS = float(os.environ.get("BENCH_DB_LATENCY_MS", "10"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "4"))
CLIENTS = (1, 8, 32)
# The image's defaults (gunicorn.conf.py): two workers; gthread gives each four threads.
WORKERS = os.environ.get("BENCH_WORKERS", "2")
THREADS = os.environ.get("BENCH_THREADS", "4")
SEEDED_USERS = 100


class CountingCollection:
    """Wraps a collection: counts the calls that reach the database, and makes each of them
    wait DELAY seconds first, like a round trip to a remote server."""

    CALLS = ("find", "find_one", "insert_many", "bulk_write", "count_documents", "delete_many")

    def __init__(self, collection: Any, delay: float = 0.0) -> None:
        self.collection = collection
        self.delay = delay
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.collection, name)
        if name not in self.CALLS:
            return attribute

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            time.sleep(self.delay)
            return attribute(*args, **kwargs)

        return counted


def wrap_collection(store: usersapi.UserStore, delay: float = 0.0) -> CountingCollection:
    counter = CountingCollection(store.users(), delay)
    as_collection = cast("Collection[usersapi.Document]", counter)
    store.users = lambda: as_collection  # type: ignore[method-assign]
    return counter


def latency_app() -> Flask:
    """The app as gunicorn serves it, for the workers' comparison: the in-memory store of
    each worker holds the same users, and every database call waits BENCH_DB_LATENCY_MS.
    With BENCH_MONGO_URI the real server's own latency is measured instead."""
    app = usersapi.create_app()
    if os.environ.get("BENCH_MONGO_URI"):
        return app
    store: usersapi.UserStore = app.extensions["usersapi.store"]
    usersapi.create_users(store, list(users(SEEDED_USERS)))
    wrap_collection(store, DB_LATENCY_MS / 1000)
    return app


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_gunicorn(
    port: int, mongo_uri: str, *options: str, app: str = "usersapi:create_app()"
) -> subprocess.Popen[bytes]:
    """gunicorn with the project's gunicorn.conf.py, as the image runs it."""
    env = {**os.environ, "MONGO_URI": mongo_uri, "LOG_LEVEL": "WARNING"}
    command = [
        sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py",
        "--bind", f"127.0.0.1:{port}", *options, app,
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
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
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
    # The in-memory store lives in one process, so it gets exactly one worker.
    workers = "1" if mongo_uri == usersapi.IN_MEMORY_URI else WORKERS
    server = start_gunicorn(port, mongo_uri, "--workers", workers)
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


def load(port: int, path: str, clients: int) -> tuple[int, list[float]]:
    """CLIENTS threads each send requests one after the other, each on a new connection
    (as nginx does upstream), for SECONDS; the number of answers and their latencies."""
    deadline = time.perf_counter() + SECONDS
    latencies: list[float] = []
    failures: list[int] = []

    def client() -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            status = call(port, "GET", path)[0]
            latencies.append(time.perf_counter() - started)
            if status != 200:
                failures.append(status)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        sys.exit(f"{len(failures)} requests failed, e.g. {failures[0]}")
    return len(latencies), latencies


def workers_compared(mongo_uri: str) -> None:
    """The same requests against sync and gthread workers, while the database is slow."""
    path = "/users?limit=10"  # two database calls: a count and a find
    latency = "its own" if os.environ.get("BENCH_MONGO_URI") else f"{DB_LATENCY_MS:g} ms"
    print(
        f"\nGET {path} (2 database calls, {latency} each), {WORKERS} workers, "
        f"{SECONDS:g} s per run, a new connection per request"
    )
    print(f"{'workers':<22} {'clients':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    kinds = {
        "sync": ("--worker-class", "sync", "--threads", "1"),
        f"gthread, {THREADS} threads": ("--worker-class", "gthread", "--threads", THREADS),
    }
    for kind, options in kinds.items():
        port = free_port()
        server = start_gunicorn(
            port, mongo_uri, "--workers", WORKERS, *options, app="benchmark:latency_app()"
        )
        try:
            for clients in CLIENTS:
                count, latencies = load(port, path, clients)
                cuts = statistics.quantiles(latencies, n=100)
                print(
                    f"{kind:<22} {clients:>7} {count / SECONDS:>8.1f} "
                    f"{cuts[49] * 1000:>8.1f} {cuts[98] * 1000:>8.1f}"
                )
        finally:
            server.terminate()
            server.wait(timeout=30)


def round_trips() -> None:
    """Database calls one batch makes, counted in process on the in-memory store."""
    settings = usersapi.Settings(mongo_uri=usersapi.IN_MEMORY_URI, log_level="WARNING")
    app = usersapi.create_app(settings)
    store: usersapi.UserStore = app.extensions["usersapi.store"]
    counter = wrap_collection(store)
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
    workers_compared(mongo_uri)
    round_trips()


if __name__ == "__main__":
    main()
