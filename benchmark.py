"""Throughput of the users API through gunicorn, sync against gthread workers while the
database is slow, database round trips per batch and, against a MongoDB server, the CPU
each request costs next to a minimal Flask + pymongo app (minimal_app.py).

    tox -e bench                                   # in-memory store; no CPU comparison
    BENCH_MONGO_URI=mongodb://... tox -e bench      # against a MongoDB-wire server
    BENCH_DB_LATENCY_MS=0 tox -e bench              # no simulated database latency
    tox -e bench -- cpu                             # only some parts: throughput, workers,
                                                    # round-trips, cpu

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from bson import ObjectId
from flask import Flask
from pymongo import MongoClient
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
    port: int,
    mongo_uri: str,
    *options: str,
    app: str = "usersapi:create_app()",
    env: Mapping[str, str] | None = None,
    ready_path: str = "/health",
) -> subprocess.Popen[bytes]:
    """gunicorn with the project's gunicorn.conf.py, as the image runs it; with ENV, its
    variables are set and the server's output is discarded."""
    settings = {"MONGO_URI": mongo_uri, "LOG_LEVEL": "WARNING"} if env is None else env
    command = [
        sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py",
        "--bind", f"127.0.0.1:{port}", *options, app,
    ]  # fmt: skip
    output = None if env is None else subprocess.DEVNULL
    server = subprocess.Popen(
        command, env={**os.environ, **settings}, cwd=HERE, stdout=output, stderr=output
    )
    for _ in range(100):
        try:
            if call(port, "GET", ready_path)[0] == 200:
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


def run_clients(threads: list[threading.Thread], failures: Sequence[object]) -> None:
    """Start the client threads, wait for them all, and stop if any request failed."""
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        sys.exit(f"{len(failures)} requests failed, e.g. {failures[0]}")


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

    run_clients([threading.Thread(target=client) for _ in range(clients)], failures)
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


# --- CPU per request: the API against a minimal Flask + pymongo app (minimal_app.py), both
# served by gunicorn with gunicorn.conf.py as the image runs it, on the same MongoDB server
# and the same users. The figure is the CPU time the gunicorn master and its workers spent
# (utime + stime from /proc) while a round of requests was answered, divided by the
# requests. Rounds of the two apps alternate, so a machine busy with other work slows both
# alike, and the cheapest round of each counts: other work can only add to a round.

CPU_ROUNDS = int(os.environ.get("BENCH_CPU_ROUNDS", "5"))
CPU_REQUESTS = int(os.environ.get("BENCH_CPU_REQUESTS", "1000"))
CPU_CLIENTS = int(os.environ.get("BENCH_CPU_CLIENTS", "4"))
# Few users: the lab's MongoDB stand-in scans a collection for any query, so its answers
# slow down as the collection grows (the created users are removed after each round).
CPU_SEEDED_USERS = 100
CPU_DATABASE = "usersapi_bench_cpu"
TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Operation:
    label: str
    method: str
    path: str
    status: int

    def requests(self, count: int) -> list[tuple[str, object]]:
        """COUNT requests (path and body) of this operation; each create a new user."""
        if self.method == "POST":
            return [(self.path, user) for user in users(count)]
        return [(self.path, None)] * count


def proc_stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name (the state is the first)."""
    text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    return text.rsplit(")", 1)[1].split()


def gunicorn_processes(master: int) -> list[int]:
    """The gunicorn master and its workers (the processes whose parent it is)."""
    workers = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(proc_stat(int(entry.name))[1]) == master:
                    workers.append(int(entry.name))
            except (OSError, IndexError):
                continue  # gone meanwhile
    return [master, *workers]


def cpu_ticks(master: int) -> dict[int, int]:
    """Clock ticks of CPU (user + system) each gunicorn process has used so far."""
    ticks = {}
    for pid in gunicorn_processes(master):
        try:
            fields = proc_stat(pid)
        except OSError:
            continue
        ticks[pid] = int(fields[11]) + int(fields[12])
    return ticks


def send_all(port: int, method: str, requests: list[tuple[str, object]], status: int) -> None:
    """The requests from CPU_CLIENTS threads, each on a new connection (as nginx does)."""
    failures: list[tuple[int, Any]] = []

    def client(share: list[tuple[str, object]]) -> None:
        for path, body in share:
            answer = call(port, method, path, body)
            if answer[0] != status:
                failures.append(answer)

    shares = [requests[n::CPU_CLIENTS] for n in range(CPU_CLIENTS)]
    run_clients([threading.Thread(target=client, args=(share,)) for share in shares], failures)


def cpu_ms_per_request(
    server: subprocess.Popen[bytes], port: int, operation: Operation, count: int
) -> float:
    requests = operation.requests(count)
    before = cpu_ticks(server.pid)
    send_all(port, operation.method, requests, operation.status)
    after = cpu_ticks(server.pid)
    used = sum(ticks - before.get(pid, 0) for pid, ticks in after.items())
    return used / TICKS_PER_SECOND * 1000 / count


def cpu_compared(mongo_uri: str | None) -> None:
    print(
        f"\nCPU per request, gunicorn master and workers (gunicorn.conf.py), {CPU_CLIENTS} "
        f"clients, cheapest of {CPU_ROUNDS} rounds of {CPU_REQUESTS} requests"
    )
    if not mongo_uri:
        print(
            "  not measured: set BENCH_MONGO_URI to a MongoDB-wire server. The in-memory "
            "store lives in each worker and costs more CPU than the API itself, so it "
            "cannot serve as a common backend."
        )
        return
    env = {"MONGO_URI": mongo_uri, "MONGO_DB": CPU_DATABASE, "LOG_LEVEL": "INFO"}
    apps = {"usersapi": "usersapi:create_app()", "minimal": "minimal_app:create_app()"}
    ports = {name: free_port() for name in apps}
    servers = {
        name: start_gunicorn(ports[name], mongo_uri, app=app, env=env, ready_path="/users")
        for name, app in apps.items()
    }
    client: MongoClient[usersapi.Document] = MongoClient(mongo_uri)
    collection = client[CPU_DATABASE]["users"]
    try:
        status, created = call(ports["usersapi"], "POST", "/users", users(CPU_SEEDED_USERS))
        expect(201, (status, created))
        seeded = [ObjectId(user["id"]) for user in created]
        operations = [
            Operation("GET /users/<id>", "GET", f"/users/{created[0]['id']}", 200),
            Operation("GET /users (a page of 20)", "GET", "/users?limit=20&offset=40", 200),
            Operation("GET /users/search", "GET", "/users/search?q=bench&limit=20", 200),
            Operation("POST /users (one user)", "POST", "/users", 201),
        ]
        figures: dict[tuple[str, str], list[float]] = {}
        # A first round of a few requests warms up (each worker's client, the index);
        # its figures are not kept.
        for round_number, count in enumerate([50] + [CPU_REQUESTS] * CPU_ROUNDS):
            # Alternate which app goes first, so neither always follows the other's load.
            order = list(apps) if round_number % 2 == 0 else list(reversed(apps))
            for operation in operations:
                for name in order:
                    used = cpu_ms_per_request(servers[name], ports[name], operation, count)
                    if round_number > 0:
                        figures.setdefault((operation.label, name), []).append(used)
                    collection.delete_many({"_id": {"$nin": seeded}})
        print(f"{'operation':<28} {'usersapi ms':>11} {'minimal ms':>10} {'ratio':>6}   rounds")
        for operation in operations:
            ours = figures[operation.label, "usersapi"]
            minimal = figures[operation.label, "minimal"]
            spread = f"{max(ours) / min(ours):.2f}x, {max(minimal) / min(minimal):.2f}x"
            print(
                f"{operation.label:<28} {min(ours):>11.3f} {min(minimal):>10.3f} "
                f"{min(ours) / min(minimal):>6.2f}   max/min {spread}"
            )
    finally:
        for server in servers.values():
            server.terminate()
            server.wait(timeout=30)
        client.drop_database(CPU_DATABASE)
        client.close()


SECTIONS = ("throughput", "workers", "round-trips", "cpu")


def main() -> None:
    sections = sys.argv[1:] or SECTIONS
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        sys.exit(f"usage: benchmark.py [{' | '.join(SECTIONS)}]...; unknown: {sorted(unknown)}")
    mongo_uri = os.environ.get("BENCH_MONGO_URI", usersapi.IN_MEMORY_URI)
    print(f"usersapi benchmark: gunicorn, {usersapi.Settings(mongo_uri=mongo_uri).describe()}")
    if "throughput" in sections:
        throughput(mongo_uri)
    if "workers" in sections:
        workers_compared(mongo_uri)
    if "round-trips" in sections:
        round_trips()
    if "cpu" in sections:
        cpu_compared(os.environ.get("BENCH_MONGO_URI"))


if __name__ == "__main__":
    main()
