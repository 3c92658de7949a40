"""verify's and the drill's checks from inside the swarm, one PASS/FAIL line each.

stack/swarm.sh feeds this file to the api image's Python on stdin (`python - ARGS`) in a
short-lived task:

  api-position --db DB         a task with the api's networks, MongoDB settings (MONGO_* in
                               the environment) and secret: what the API's own MongoDB user
                               may do, MongoDB refusing anyone without credentials, /metrics of
                               every api task, and a MongoDB hello to mongo (prints
                               `mongo-address IP` for the next check)
  ingress-position --networks NAMES --mongo-address IP
                               a task with exactly the ingress's networks: the database's name
                               does not resolve and its address does not answer
  duplicate-refused --state FILE
                               the drill's client: a second user with a backed-up email,
                               written straight into MongoDB, is refused by the unique index
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bson
from pymongo import MongoClient
from pymongo.errors import DuplicateKeyError, OperationFailure, PyMongoError

Document = dict[str, Any]
MONGO_PORT = 27017
OP_MSG = 2013
METRICS_PORT = 8000


def line(text: str, *, ok: bool) -> str:
    return f"{'PASS' if ok else 'FAIL'}  {text}"


def client_from_env() -> MongoClient[Document]:
    """A client logged in exactly as the API logs in, from the same settings and secret."""
    env = os.environ
    password = Path(env["MONGO_PASSWORD_FILE"]).read_text(encoding="utf-8").strip()
    return MongoClient(
        host=env["MONGO_HOST"],
        port=int(env["MONGO_PORT"]),
        username=env["MONGO_USER"],
        password=password,
        authSource=env["MONGO_AUTH_SOURCE"],
        serverSelectionTimeoutMS=5000,
    )


def refused(call: Callable[[], object]) -> str:
    try:
        call()
    except OperationFailure as exc:
        return f"code {exc.code}"
    return "allowed"


def least_privilege(db: str) -> list[str]:
    client = client_from_env()
    user = f"{os.environ['MONGO_USER']} on {os.environ['MONGO_AUTH_SOURCE']}"
    database = client[db]
    scratch = database[f"verify_{int(time.time())}"]
    try:
        inserted = scratch.insert_one({"n": 1}).inserted_id
        scratch.update_one({"_id": inserted}, {"$set": {"n": 2}})
        found = scratch.find_one({"_id": inserted})
        scratch.delete_one({"_id": inserted})
        scratch.create_index("n", unique=True)
        crud = found is not None and found["n"] == 2 and scratch.count_documents({}) == 0
    finally:
        database.drop_collection(scratch.name)
    lines = [
        line(
            f"as the API's MongoDB user ({user}): insert, update, find, delete and a unique "
            f"index on a scratch collection of {db} work",
            ok=crud,
        )
    ]
    names = client.list_database_names()
    lines.append(
        line(
            f"as the API's user, listDatabases shows only its database: [{','.join(names)}]",
            ok=names == [db],
        )
    )
    attempts: dict[str, Callable[[], object]] = {
        f"user management (createUser on {db})": lambda: database.command(
            "createUser",
            "intruder",
            pwd="not-kept",  # noqa: S106 - refused anyway
            roles=[],
        ),
        "reading users (usersInfo, all databases)": lambda: database.command(
            "usersInfo", {"forAllDBs": True}
        ),
        "the admin database (find on admin.system.users)": client.admin["system.users"].find_one,
        "another database (insert into otherdb.t)": lambda: client["otherdb"]["t"].insert_one(
            {"n": 1}
        ),
    }
    for what, call in attempts.items():
        result = refused(call)
        lines.append(
            line(
                f"as the API's user, {what} is refused: {result} (13 expected)",
                ok=result == "code 13",
            )
        )
    return lines


def unauthenticated() -> str:
    client: MongoClient[Document] = MongoClient(
        host=os.environ["MONGO_HOST"], port=MONGO_PORT, serverSelectionTimeoutMS=5000
    )
    result = refused(lambda: client.admin.command("listDatabases"))
    return line(
        f"MongoDB refuses unauthenticated commands: listDatabases without credentials -> {result}",
        ok=result == "code 13",
    )


def hello_answered(address: str) -> str:
    """Sends MongoDB's hello (OP_MSG) to ADDRESS: 'reply' from a MongoDB server, else why not."""
    document = bson.encode({"hello": 1, "$db": "admin"})
    body = struct.pack("<I", 0) + b"\x00" + document
    message = struct.pack("<iiii", 16 + len(body), 1, 0, OP_MSG) + body
    try:
        with socket.create_connection((address, MONGO_PORT), timeout=3) as conn:
            conn.sendall(message)
            answer = conn.recv(65536)
    except OSError as exc:
        return type(exc).__name__ if not str(exc) else f"{type(exc).__name__}: {exc}"
    if not answer:
        return "connection closed without a reply"
    return "reply" if b"maxWireVersion" in answer else f"{len(answer)} bytes that are not MongoDB's"


def addresses(name: str) -> list[str]:
    try:
        found = socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM)
    except socket.gaierror:
        return []
    return sorted({str(entry[4][0]) for entry in found})


def metrics_of_every_task() -> str:
    tasks = addresses("api")
    answers = []
    for address in tasks:
        url = f"http://{address}:{METRICS_PORT}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                text = reply.read().decode()
                status = reply.status
        except OSError as exc:
            answers.append((address, 0, str(exc)))
            continue
        sample = next(
            (s for s in text.splitlines() if s.startswith("usersapi_http_requests_total{")), ""
        )
        answers.append((address, status, sample))
    ok = bool(answers) and all(status == 200 and sample for _, status, sample in answers)
    shown = ", ".join(f"{a} -> {s}" for a, s, _ in answers) or "no api task resolved"
    example = answers[0][2] if ok else ""
    return line(
        f"/metrics answers inside the stack's network, from every api task ({shown})"
        + (f", e.g. {example}" if example else ""),
        ok=ok,
    )


def api_position(db: str) -> list[str]:
    lines = least_privilege(db)
    lines.append(unauthenticated())
    lines.append(metrics_of_every_task())
    mongo = addresses("mongo")
    answer = hello_answered(mongo[0]) if mongo else "no address"
    lines.append(
        line(
            f"from the api's networks, a MongoDB hello to mongo ({', '.join(mongo) or '?'}:"
            f"{MONGO_PORT}) gets a MongoDB {answer}",
            ok=answer == "reply",
        )
    )
    if mongo:
        lines.append(f"mongo-address {mongo[0]}")
    return lines


def ingress_position(networks: str, mongo_address: str) -> list[str]:
    where = f"from a task with exactly the ingress's networks [{networks}]"
    api, mongo = addresses("api"), addresses("mongo")
    answer = hello_answered(mongo_address) if mongo_address != "none" else "no address to try"
    return [
        line(
            f"{where}: 'mongo' does not resolve ({', '.join(mongo) or 'no address'}) while "
            f"'api' does ({', '.join(api) or 'no address'})",
            ok=bool(api) and not mongo,
        ),
        line(
            f"{where}: a MongoDB hello to mongo's address {mongo_address}:{MONGO_PORT} gets "
            f"no MongoDB reply ({answer}), where the api's networks get one",
            ok=answer not in {"reply", "no address to try"},
        ),
    ]


def duplicate_refused(state_file: Path) -> list[str]:
    state = json.loads(state_file.read_text())
    email = str(state["first"][1])
    users = client_from_env()[os.environ["MONGO_DB"]]["users"]
    try:
        users.insert_one({"name": "dup", "email": email, "username": "dup"})
    except DuplicateKeyError:
        return [
            line(
                f"drill: the unique email index holds after restore: inserting {email} again "
                "straight into MongoDB -> duplicate key error",
                ok=True,
            )
        ]
    users.delete_many({"name": "dup", "email": email, "username": "dup"})
    return [line(f"drill: after restore a second {email} went straight into MongoDB", ok=False)]


def main(argv: list[str] | None = None) -> int:
    top = argparse.ArgumentParser(prog="inside_checks.py")
    sub = top.add_subparsers(dest="command", required=True)
    api = sub.add_parser("api-position")
    api.add_argument("--db", required=True)
    ingress = sub.add_parser("ingress-position")
    ingress.add_argument("--networks", required=True)
    ingress.add_argument("--mongo-address", required=True)
    duplicate = sub.add_parser("duplicate-refused")
    duplicate.add_argument("--state", type=Path, required=True)
    args = top.parse_args(argv)
    try:
        if args.command == "api-position":
            lines = api_position(args.db)
        elif args.command == "ingress-position":
            lines = ingress_position(args.networks, args.mongo_address)
        else:
            lines = duplicate_refused(args.state)
    except (PyMongoError, OSError, KeyError, ValueError) as exc:
        print(f"FAIL  {args.command}: {type(exc).__name__}: {exc}")
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
