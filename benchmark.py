"""Throughput of the users API through gunicorn, worker models compared while the database
is slow, database round trips per batch and, against a MongoDB server, the CPU each request
costs next to a bare Flask + pymongo app and next to Eve (minimal_app.py), in two protocols.

    tox -e bench                                   # in-memory store; no CPU comparison
    BENCH_MONGO_URI=mongodb://... tox -e bench      # against a MongoDB-wire server
    BENCH_DB_LATENCY_MS=0 tox -e bench              # no simulated database latency
    tox -e bench -- cpu keepalive                   # only some parts: throughput, workers,
                                                    # round-trips, cpu, keepalive

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
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import quote

from bson import ObjectId
from flask import Flask
from pymongo import MongoClient
from pymongo.collection import Collection

import usersapi
import usersapi_keys

HERE = Path(__file__).parent
REQUESTS = int(os.environ.get("BENCH_REQUESTS", "2000"))
SEARCHES = int(os.environ.get("BENCH_SEARCHES", "300"))
BATCHES = int(os.environ.get("BENCH_BATCHES", "5"))
BATCH_SIZE = 1000
DB_LATENCY_MS = float(os.environ.get("BENCH_DB_LATENCY_MS", "10"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "4"))
CLIENTS = (1, 8, 32)
# The worker models the workers' comparison serves: sync, gthread:THREADS, gevent, and
# "shipped" (gunicorn.conf.py's own choice, from WEB_CONCURRENCY and GUNICORN_THREADS).
WORKER_KINDS = os.environ.get("BENCH_WORKER_KINDS", "sync gthread:4 shipped").split()
WORKERS = os.environ.get("BENCH_WORKERS", "2")
# Extra gunicorn options for the servers that run with gunicorn.conf.py in the CPU
# comparisons (e.g. "--worker-class sync"), to measure another configuration.
SERVER_OPTIONS = tuple(shlex.split(os.environ.get("BENCH_SERVER_OPTIONS", "")))
SEEDED_USERS = 100

# An API key as the project makes them: every request carries it, as clients of an API with
# access control do (an API without it ignores the header). Made anew for every run.
API_KEY = usersapi_keys.new_key()
AUTHORIZATION = {"Authorization": f"Bearer {API_KEY}"}
API_KEYS = usersapi_keys.key_line("bench", "write", API_KEY)


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


@contextmanager
def outside_the_project() -> Iterator[Path]:
    """An empty working directory: gunicorn started there reads no gunicorn.conf.py."""
    with tempfile.TemporaryDirectory(prefix="usersapi-bench-") as directory:
        yield Path(directory)


def start_gunicorn(
    port: int,
    mongo_uri: str,
    *options: str,
    app: str = "usersapi:create_app()",
    env: Mapping[str, str] | None = None,
    ready_path: str = "/health",
    config_dir: Path | None = None,
) -> subprocess.Popen[bytes]:
    """gunicorn with the project's gunicorn.conf.py, as the image runs it, or, with
    CONFIG_DIR (an empty directory to start in), with gunicorn's defaults and OPTIONS
    alone; with ENV, its variables are set and the server's output is discarded."""
    settings = (
        {"MONGO_URI": mongo_uri, "LOG_LEVEL": "WARNING", "API_KEYS": API_KEYS}
        if env is None
        else env
    )
    if config_dir is None:
        where, config = HERE, ["--config", "gunicorn.conf.py"]
    else:
        # No control socket: two such servers would share its path in $HOME.
        where, config = config_dir, ["--chdir", str(HERE), "--no-control-socket"]
    command = [
        sys.executable, "-m", "gunicorn", *config,
        "--bind", f"127.0.0.1:{port}", *options, app,
    ]  # fmt: skip
    output = None if env is None else subprocess.DEVNULL
    server = subprocess.Popen(
        command, env={**os.environ, **settings}, cwd=where, stdout=output, stderr=output
    )
    for _ in range(100):
        try:
            if call(port, "GET", ready_path)[0] == 200:
                return server
        except OSError:
            time.sleep(0.1)
    server.kill()
    sys.exit(f"gunicorn did not start: {' '.join(command)}")


def call(port: int, method: str, path: str, body: object = None) -> tuple[int, Any]:
    """One request on a connection of its own, which the server closes after its answer:
    nginx's requests upstream say "Connection: close" (HTTP/1.0, its default)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        payload = None if body is None else json.dumps(body)
        headers = {**AUTHORIZATION, "Connection": "close"}
        if body is not None:
            headers["Content-Type"] = "application/json"
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


@cache
def shipped_workers() -> str:
    """The worker model gunicorn.conf.py chooses, as gunicorn reads it (--print-config)."""
    with tempfile.TemporaryDirectory(prefix="usersapi-bench-") as metrics:
        env = {**os.environ, "MONGO_URI": usersapi.IN_MEMORY_URI}
        env["PROMETHEUS_MULTIPROC_DIR"] = metrics  # else the config makes a directory
        printed = subprocess.run(
            [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "--print-config"],
            cwd=HERE, env=env, capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    config = {
        name.strip(): value.strip()
        for name, _, value in (line.partition("=") for line in printed.splitlines())
    }
    kind = config["worker_class"]
    threads = f" x {config['threads']} threads" if kind == "gthread" else ""
    return f"{config['workers']} {kind}{threads}"


def worker_options(kind: str) -> tuple[str, tuple[str, ...]]:
    """A row label and gunicorn options for one of WORKER_KINDS."""
    name, _, threads = kind.partition(":")
    if name == "shipped":
        return f"as shipped: {shipped_workers()}", ()
    if name == "gthread":
        threads = threads or "4"
        return f"gthread, {threads} threads", (
            "--workers",
            WORKERS,
            "-k",
            "gthread",
            "--threads",
            threads,
        )
    if name in {"sync", "gevent"}:
        return name, ("--workers", WORKERS, "-k", name, "--threads", "1")
    sys.exit(f"BENCH_WORKER_KINDS: unknown worker kind {kind!r} (sync, gthread:N, gevent, shipped)")


def workers_compared(mongo_uri: str) -> None:
    """The same requests against each worker model, while the database is slow."""
    path = "/users?limit=10"  # two database calls: a count and a find
    latency = "its own" if os.environ.get("BENCH_MONGO_URI") else f"{DB_LATENCY_MS:g} ms"
    print(
        f"\nGET {path} (2 database calls, {latency} each), {WORKERS} workers unless shipped "
        f"says otherwise, {SECONDS:g} s per run, a new connection per request"
    )
    print(f"{'workers':<34} {'clients':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for kind in WORKER_KINDS:
        label, options = worker_options(kind)
        port = free_port()
        server = start_gunicorn(port, mongo_uri, *options, app="benchmark:latency_app()")
        try:
            for clients in CLIENTS:
                count, latencies = load(port, path, clients)
                cuts = statistics.quantiles(latencies, n=100)
                print(
                    f"{label:<34} {clients:>7} {count / SECONDS:>8.1f} "
                    f"{cuts[49] * 1000:>8.1f} {cuts[98] * 1000:>8.1f}"
                )
        finally:
            server.terminate()
            server.wait(timeout=30)


def round_trips() -> None:
    """Database calls one batch makes, counted in process on the in-memory store."""
    settings = usersapi.Settings.from_env(
        {"MONGO_URI": usersapi.IN_MEMORY_URI, "LOG_LEVEL": "WARNING", "API_KEYS": API_KEYS}
    )
    app = usersapi.create_app(settings)
    store: usersapi.UserStore = app.extensions["usersapi.store"]
    counter = wrap_collection(store)
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = AUTHORIZATION["Authorization"]
    created = client.post("/users", json=users(BATCH_SIZE)).json or []
    print(f"round trips, create of {BATCH_SIZE} users   {len(counter.calls):>4}  {counter.calls}")
    counter.calls.clear()
    edits = [{"id": user["id"], "email": f"edited.{user['email']}"} for user in created]
    client.patch("/users", json=edits)
    print(f"round trips, edit of {BATCH_SIZE} users     {len(counter.calls):>4}  {counter.calls}")


# --- CPU per request: the API next to two references on one MongoDB-wire server, each app
# with a database of its own holding the same users. The figure is the CPU time the gunicorn
# master and its workers spent (utime + stime from /proc) while a round of requests was
# answered, divided by the requests. Rounds of the apps alternate, so a machine busy with
# other work slows all alike, and the cheapest round of each counts: other work can only add
# to a round. Two protocols:
#
# "cpu": rounds of CPU_REQUESTS requests from CPU_CLIENTS threads, each request on a new
# connection (as nginx does upstream), over CPU_SEEDED_USERS users, for four operations;
# every app is served by gunicorn with gunicorn.conf.py, so only the apps' code differs.
#
# "keepalive": rounds of SECONDS of GET by id from KEEPALIVE_CLIENTS threads, each on one
# persistent HTTP/1.1 connection, over KEEPALIVE_USERS users; the API is served as the
# image serves it, the references as their users would: `gunicorn -w 2` and nothing else.

CPU_ROUNDS = int(os.environ.get("BENCH_CPU_ROUNDS", "5"))
CPU_REQUESTS = int(os.environ.get("BENCH_CPU_REQUESTS", "1000"))
CPU_CLIENTS = int(os.environ.get("BENCH_CPU_CLIENTS", "4"))
# Few users: the lab's MongoDB stand-in scans a collection for any query but a read by id,
# so its answers to a page or a search slow down as the collection grows (the created
# users are removed after each round).
CPU_SEEDED_USERS = 100
KEEPALIVE_ROUNDS = int(os.environ.get("BENCH_KEEPALIVE_ROUNDS", "3"))
KEEPALIVE_CLIENTS = int(os.environ.get("BENCH_KEEPALIVE_CLIENTS", "8"))
KEEPALIVE_USERS = int(os.environ.get("BENCH_KEEPALIVE_USERS", "1200"))
CPU_DATABASE = "usersapi_bench_cpu"
TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class App:
    """One app of a CPU comparison and how gunicorn serves it: with gunicorn.conf.py as
    the image runs it (plus BENCH_SERVER_OPTIONS), or with OPTIONS alone."""

    label: str
    target: str
    kind: Literal["api", "bare", "eve"]  # what URLs it answers and how its users are made
    shipped_config: bool
    options: tuple[str, ...] = ()

    @property
    def eve(self) -> bool:
        return self.kind == "eve"

    def server(self) -> str:
        if self.shipped_config:
            return " ".join([f"gunicorn.conf.py ({shipped_workers()})", *self.options])
        return " ".join(["gunicorn", *self.options])


API = App("API", "usersapi:create_app()", "api", shipped_config=True, options=SERVER_OPTIONS)
BARE = App("bare", "minimal_app:create_app()", "bare", shipped_config=False, options=("-w", "2"))
EVE = App("Eve", "minimal_app:create_eve_app()", "eve", shipped_config=False, options=("-w", "2"))
# The bare app's code served as the API is: what the API's own code costs, server aside.
MINIMAL = App("minimal", BARE.target, "bare", shipped_config=True, options=SERVER_OPTIONS)
COMPARED = (API, MINIMAL, BARE, EVE)


@dataclass
class Served:
    """An app running under gunicorn on PORT, with the ids of the users in its database."""

    app: App
    process: subprocess.Popen[bytes]
    port: int
    database: str
    ids: list[str] = field(default_factory=list)

    def cpu_ms(self) -> float:
        """CPU time the gunicorn master and its workers have used so far, in ms."""
        return sum(process_cpu_ms(pid) for pid in gunicorn_processes(self.process.pid))


def process_cpu_ms(pid: int) -> float:
    """CPU time process PID has used so far, in ms: the scheduler's runtime of each of its
    threads (/proc/PID/task/TID/sched, to the nanosecond) where the kernel shows it, else
    utime + stime (/proc/PID/stat, in clock ticks: 10 ms steps, too coarse for a round of
    a few hundred requests). 0 for a process gone meanwhile."""
    try:
        runtimes = [
            line.partition(":")[2]
            for task in Path(f"/proc/{pid}/task").iterdir()
            for line in (task / "sched").read_text(encoding="ascii").splitlines()
            if line.startswith("se.sum_exec_runtime")
        ]
        if runtimes:
            return sum(float(runtime) for runtime in runtimes)
        fields = proc_stat(pid)
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_SECOND * 1000


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


def post_users(served: Served, people: list[dict[str, str]]) -> list[str]:
    """Create PEOPLE through the app's own POST, a batch at a time; their ids."""
    ids: list[str] = []
    for start in range(0, len(people), BATCH_SIZE):
        status, created = call(served.port, "POST", "/users", people[start : start + BATCH_SIZE])
        expect(201, (status, created))
        if served.app.eve:
            items = (
                created["_items"]
                if isinstance(created, dict) and "_items" in created
                else [created]
            )
            ids.extend(item["_id"] for item in items)
        else:
            ids.extend(item["id"] for item in created)
    return ids


@contextmanager
def serving(apps: Sequence[App], mongo_uri: str, seeded: int) -> Iterator[list[Served]]:
    """The apps under gunicorn, each on a database of its own holding the same SEEDED users:
    the API and Eve create them through their own POST; a bare app gets copies of the
    API's documents. The databases are dropped afterwards."""
    client: MongoClient[usersapi.Document] = MongoClient(mongo_uri)
    servers: list[Served] = []
    try:
        with outside_the_project() as empty:
            for number, app in enumerate(apps):
                database = f"{CPU_DATABASE}_{number}"
                client.drop_database(database)
                env = {
                    "MONGO_URI": mongo_uri, "MONGO_DB": database, "LOG_LEVEL": "INFO",
                    "API_KEYS": API_KEYS,
                }  # fmt: skip
                port = free_port()
                process = start_gunicorn(
                    port, mongo_uri, *app.options, app=app.target, env=env,
                    ready_path="/users?limit=1", config_dir=None if app.shipped_config else empty,
                )  # fmt: skip
                servers.append(Served(app, process, port, database))
            people = users(seeded)
            for served in servers:
                if served.app.kind != "bare":
                    served.ids = post_users(served, people)
                else:
                    source = next(s for s in servers if s.app.kind == "api")
                    docs = list(client[source.database]["users"].find())
                    client[served.database]["users"].insert_many(docs)
                    served.ids = [str(doc["_id"]) for doc in docs]
            yield servers
    finally:
        for served in servers:
            served.process.terminate()
            served.process.wait(timeout=30)
            client.drop_database(served.database)
        client.close()


def rounds_in_turn(servers: list[Served], rounds: int) -> Iterator[tuple[int, list[Served]]]:
    """Round 0 (a warm-up) and the counted rounds, each with the apps in a rotated order
    so that none always follows the same one."""
    for number in range(rounds + 1):
        shift = number % len(servers)
        yield number, servers[shift:] + servers[:shift]


def ratios(cheapest: Mapping[str, float]) -> dict[str, float]:
    """The API against each reference (API/minimal, API/bare) and Eve against the API."""
    api = cheapest[API.label]
    named = {f"API/{label}": api / cpu for label, cpu in cheapest.items() if label != API.label}
    if EVE.label in cheapest:
        del named[f"API/{EVE.label}"]
        named[f"{EVE.label}/API"] = cheapest[EVE.label] / api
    return named


def spread(rounds: Mapping[str, Sequence[float]]) -> float:
    """The largest max/min of any app's rounds: how much the machine moved the figures."""
    return max(max(values) / min(values) for values in rounds.values())


def print_servers(apps: Sequence[App]) -> None:
    for app in apps:
        print(f"  {app.label:<8} served by {app.server()}")


# -- the "cpu" protocol: a new connection per request, four operations


@dataclass(frozen=True)
class Operation:
    label: str
    method: str
    path: str  # {id} stands for a seeded user's id
    eve_path: str
    status: int

    def requests(self, served: Served, count: int) -> list[tuple[str, object]]:
        """COUNT requests (path and body) of this operation; each create a new user."""
        if self.method == "POST":
            return [("/users", user) for user in users(count)]
        path = self.eve_path if served.app.eve else self.path
        return [(path.format(id=served.ids[0]), None)] * count


SEARCH = {"$regex": "bench", "$options": "i"}
EVE_SEARCH = quote(json.dumps({"$or": [{f: SEARCH} for f in ("name", "email", "username")]}))
OPERATIONS = [
    Operation("GET /users/<id>", "GET", "/users/{id}", "/users/{id}", 200),
    Operation(
        "GET /users (a page of 20)", "GET", "/users?limit=20&offset=40",
        "/users?max_results=20&page=3", 200,
    ),
    Operation(
        "GET /users/search", "GET", "/users/search?q=bench&limit=20",
        f"/users?where={EVE_SEARCH}&max_results=20", 200,
    ),
    Operation("POST /users (one user)", "POST", "/users", "/users", 201),
]  # fmt: skip


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


def cpu_ms_per_request(served: Served, operation: Operation, count: int) -> float:
    requests = operation.requests(served, count)
    before = served.cpu_ms()
    send_all(served.port, operation.method, requests, operation.status)
    return (served.cpu_ms() - before) / count


def cpu_compared(mongo_uri: str | None, apps: Sequence[App] = COMPARED) -> None:
    print(
        f'\nCPU per request, protocol "cpu": {CPU_CLIENTS} clients, a new connection per '
        f"request, {CPU_SEEDED_USERS} users, cheapest of {CPU_ROUNDS} rounds of {CPU_REQUESTS} "
        "requests, ms"
    )
    if not mongo_uri:
        print(
            "  not measured: set BENCH_MONGO_URI to a MongoDB-wire server. The in-memory "
            "store lives in each worker and costs more CPU than the API itself, so it "
            "cannot serve as a common backend."
        )
        return
    figures: dict[tuple[str, str], list[float]] = {}
    with serving(apps, mongo_uri, CPU_SEEDED_USERS) as servers:
        database = MongoClient[usersapi.Document](mongo_uri)
        try:
            # The warm-up round of a few requests (each worker's client, the index) is not kept.
            for number, order in rounds_in_turn(servers, CPU_ROUNDS):
                for operation in OPERATIONS:
                    for served in order:
                        count = CPU_REQUESTS if number else 50
                        used = cpu_ms_per_request(served, operation, count)
                        if number:
                            figures.setdefault((operation.label, served.app.label), []).append(used)
                        if operation.method == "POST":
                            seeded = [ObjectId(user_id) for user_id in served.ids]
                            database[served.database]["users"].delete_many(
                                {"_id": {"$nin": seeded}}
                            )
        finally:
            database.close()
    print_servers(apps)
    labels = [app.label for app in apps]
    named = list(ratios(dict.fromkeys(labels, 1.0)))
    print(
        f"{'operation':<26}"
        + "".join(f"{label:>8}" for label in labels)
        + "".join(f"{name:>12}" for name in named)
        + "  rounds max/min"
    )
    for operation in OPERATIONS:
        rounds = {label: figures[operation.label, label] for label in labels}
        cheapest = {label: min(values) for label, values in rounds.items()}
        print(
            f"{operation.label:<26}"
            + "".join(f"{cheapest[label]:>8.3f}" for label in labels)
            + "".join(f"{ratio:>12.2f}" for ratio in ratios(cheapest).values())
            + f"  {spread(rounds):.2f}"
        )


# -- the "keepalive" protocol: persistent connections, GET by id over many users


def keep_alive_load(served: Served, seconds: float) -> int:
    """KEEPALIVE_CLIENTS threads, each on one persistent connection, read users by id in
    turn for SECONDS; the number of answers. A server that closes the connection after
    each answer (gunicorn's sync workers do) gets a new one from http.client."""
    deadline = time.perf_counter() + seconds
    counts: list[int] = []
    failures: list[tuple[int, bytes]] = []
    paths = [f"/users/{user_id}" for user_id in served.ids]

    def client(start: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=300)
        answered = 0
        try:
            while time.perf_counter() < deadline:
                connection.request(
                    "GET", paths[(start + answered) % len(paths)], headers=AUTHORIZATION
                )
                response = connection.getresponse()
                body = response.read()
                if response.status != 200:
                    failures.append((response.status, body))
                    return
                answered += 1
        finally:
            connection.close()
            counts.append(answered)

    step = len(paths) // KEEPALIVE_CLIENTS
    threads = [threading.Thread(target=client, args=(n * step,)) for n in range(KEEPALIVE_CLIENTS)]
    run_clients(threads, failures)
    return sum(counts)


def keepalive_compared(mongo_uri: str | None, apps: Sequence[App] = COMPARED) -> None:
    print(
        f'\nCPU per GET by id, protocol "keepalive": {KEEPALIVE_CLIENTS} clients on persistent '
        f"connections, {KEEPALIVE_USERS} users in each app's database, cheapest of "
        f"{KEEPALIVE_ROUNDS} rounds of {SECONDS:g} s"
    )
    if not mongo_uri:
        print("  not measured: set BENCH_MONGO_URI to a MongoDB-wire server.")
        return
    used: dict[str, list[float]] = {}  # CPU ms per GET of each round
    rates: dict[str, list[float]] = {}  # answers per second of each round
    with serving(apps, mongo_uri, KEEPALIVE_USERS) as servers:
        for number, order in rounds_in_turn(servers, KEEPALIVE_ROUNDS):
            for served in order:
                seconds = SECONDS if number else 1.0  # round 0 warms up
                before = served.cpu_ms()
                answered = keep_alive_load(served, seconds)
                if number:
                    label = served.app.label
                    used.setdefault(label, []).append((served.cpu_ms() - before) / answered)
                    rates.setdefault(label, []).append(answered / seconds)
    print_servers(apps)
    print(f"{'app':<10} {'CPU ms/GET':>10} {'req/s':>7}  rounds max/min")
    for label in (app.label for app in apps):
        rounds = used[label]
        cheapest = rounds.index(min(rounds))
        print(
            f"{label:<10} {rounds[cheapest]:>10.3f} {rates[label][cheapest]:>7.0f}  "
            f"{spread({label: rounds}):.2f}"
        )
    named = ratios({label: min(rounds) for label, rounds in used.items()})
    print("  ".join(f"{name} {ratio:.2f}" for name, ratio in named.items()))


SECTIONS = ("throughput", "workers", "round-trips", "cpu", "keepalive")


def main() -> None:
    sections = sys.argv[1:] or SECTIONS
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        sys.exit(f"usage: benchmark.py [{' | '.join(SECTIONS)}]...; unknown: {sorted(unknown)}")
    mongo_uri = os.environ.get("BENCH_MONGO_URI", usersapi.IN_MEMORY_URI)
    store = usersapi.Settings(mongo_uri=mongo_uri).describe().split(";")[0]
    print(f"usersapi benchmark: gunicorn, {store}")
    if "throughput" in sections:
        throughput(mongo_uri)
    if "workers" in sections:
        workers_compared(mongo_uri)
    if "round-trips" in sections:
        round_trips()
    if "cpu" in sections:
        cpu_compared(os.environ.get("BENCH_MONGO_URI"))
    if "keepalive" in sections:
        keepalive_compared(os.environ.get("BENCH_MONGO_URI"))


if __name__ == "__main__":
    main()
