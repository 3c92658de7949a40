"""MongoDB's users and the restore lock, from a short-lived task on the stack's back network.

stack/swarm.sh feeds this file to the api image's Python on stdin (`python - ARGS`):

  users --root-user R --root-password-file F [--app DB USER PASSWORD_FILE]...
        [--backup USER CONFIG_FILE] [--lock-out DB USER]... [--drop DB USER]...
        [--drop-database DB]...
      as MongoDB's root: give USER readWrite on DB with the password in PASSWORD_FILE (created
      or updated), give the backup user the built-in roles backup and restore, lock a user out
      (a random password nobody keeps), drop a user or a database
  lock --user U --config FILE --db DB --seconds S | index ... | unlock ...
      as the backup user (its password in the Database Tools' --config FILE): the restore
      lock's steps (CONTRACTS.md): take the lock, create the unique email index, drop the lock

No password is printed or passed on a command line: they are read from secret files. Exits 1
with the cause when MongoDB refuses.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pymongo import ASCENDING, MongoClient
from pymongo.database import Database
from pymongo.errors import OperationFailure, PyMongoError

Document = dict[str, Any]
RESTORE_LOCK = "restore_lock"
CONNECT_SECONDS = 120  # a mongo task that has just started takes a moment to answer
UNAUTHORIZED = (13, 18)


def read_secret(path: str) -> str:
    return Path(path).read_text(encoding="utf-8").strip()


def tools_password(path: str) -> str:
    """The password of a Database Tools --config file: `password: "<JSON string>"`."""
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "password":
            password = json.loads(value.strip())
            if isinstance(password, str):
                return password
    raise SystemExit(f"{path}: no password line")


def connect(user: str, password: str) -> MongoClient[Document]:
    """A client logged in on admin, once the server answers (CONNECT_SECONDS at most)."""
    client: MongoClient[Document] = MongoClient(
        host=os.environ.get("MONGO_HOST", "mongo"),
        port=int(os.environ.get("MONGO_PORT", "27017")),
        username=user,
        password=password,
        authSource="admin",
        serverSelectionTimeoutMS=5000,
        tz_aware=True,
    )
    deadline = time.monotonic() + CONNECT_SECONDS
    while True:
        try:
            client.admin.command("ping")
        except OperationFailure as exc:
            if exc.code in UNAUTHORIZED:
                message = (
                    f"MongoDB refused {user}'s credentials on admin ({exc.code}): a root password "
                    "is set when the database's volume is first initialised, and only that one "
                    "logs in; SECRETS_DIR may hold another"
                )
                raise SystemExit(message) from None
            raise
        except PyMongoError:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)
        else:
            return client


def user_exists(database: Database[Document], user: str) -> bool:
    return bool(database.command("usersInfo", user).get("users"))


def ensure_user(database: Database[Document], user: str, password: str, roles: list[Any]) -> str:
    if user_exists(database, user):
        database.command("updateUser", user, pwd=password, roles=roles)
        return f"set the password and roles of {user} on {database.name}"
    database.command("createUser", user, pwd=password, roles=roles)
    return f"created the user {user} on {database.name}"


def users(args: argparse.Namespace) -> list[str]:
    client = connect(args.root_user, read_secret(args.root_password_file))
    done = []
    for db, user, password_file in args.app:
        roles = [{"role": "readWrite", "db": db}]
        done.append(
            ensure_user(client[db], user, read_secret(password_file), roles)
            + f" (readWrite on {db})"
        )
    if args.backup:
        user, config = args.backup
        roles = [{"role": "backup", "db": "admin"}, {"role": "restore", "db": "admin"}]
        done.append(
            f"{ensure_user(client.admin, user, tools_password(config), roles)} (backup, restore)"
        )
    for db, user in args.lock_out:
        if user_exists(client[db], user):
            client[db].command("updateUser", user, pwd=secrets.token_urlsafe(32))
            done.append(f"locked out {user} on {db}: a new random password that nobody keeps")
    for db, user in args.drop:
        if user_exists(client[db], user):
            client[db].command("dropUser", user)
            done.append(f"dropped the user {user} on {db}")
    for db in args.drop_database:
        client.drop_database(db)
        done.append(f"dropped the database {db}")
    return done


def lock_step(args: argparse.Namespace) -> list[str]:
    database = connect(args.user, tools_password(args.config))[args.db]
    if args.command == "lock":
        database.drop_collection(RESTORE_LOCK)
        now = datetime.now(UTC)
        expires = now + timedelta(seconds=args.seconds)
        database[RESTORE_LOCK].insert_one(
            {"_id": "restore", "started_at": now, "expires_at": expires}
        )
        return [
            f"restore lock taken in {args.db}.{RESTORE_LOCK}, expires at {expires:%H:%M:%S} UTC"
        ]
    if args.command == "index":
        database["users"].create_index([("email", ASCENDING)], unique=True, name="email_unique")
        return [f"unique email index on {args.db}.users ensured"]
    database.drop_collection(RESTORE_LOCK)
    return [f"restore lock dropped from {args.db}.{RESTORE_LOCK}"]


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="mongo_tasks.py", description="MongoDB users and restore lock"
    )
    sub = top.add_subparsers(dest="command", required=True)
    users_cmd = sub.add_parser("users")
    users_cmd.add_argument("--root-user", required=True)
    users_cmd.add_argument("--root-password-file", required=True)
    users_cmd.add_argument("--app", nargs=3, action="append", default=[])
    users_cmd.add_argument("--backup", nargs=2)
    users_cmd.add_argument("--lock-out", nargs=2, action="append", default=[])
    users_cmd.add_argument("--drop", nargs=2, action="append", default=[])
    users_cmd.add_argument("--drop-database", action="append", default=[])
    for name in ("lock", "index", "unlock"):
        step = sub.add_parser(name)
        step.add_argument("--user", required=True)
        step.add_argument("--config", required=True)
        step.add_argument("--db", required=True)
        if name == "lock":
            step.add_argument("--seconds", type=int, required=True)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        lines = users(args) if args.command == "users" else lock_step(args)
    except PyMongoError as exc:
        print(f"MongoDB: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
