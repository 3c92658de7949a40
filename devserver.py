"""The development server of the users API: ``python devserver.py`` (``tox -e serve``).

Flask's own server on 127.0.0.1:8000 (HOST, PORT), readable text logs unless LOG_FORMAT says
otherwise. With no MongoDB setting it uses an in-memory store (mongomock), whose data is
lost on exit; with no API key it makes one, kept in .usersapi-dev-key (readable by its
owner only) so that curl can read it, and prints it at start. Production runs gunicorn
with gunicorn.conf.py instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping
from pathlib import Path

import usersapi_keys as keys
from usersapi import IN_MEMORY_URI, create_app
from usersapi_settings import ConfigError

DEV_KEY_FILE = Path(".usersapi-dev-key")


def development_key() -> str:
    """The development server's write key, made once."""
    if not DEV_KEY_FILE.exists():
        DEV_KEY_FILE.touch(mode=0o600)
        DEV_KEY_FILE.write_text(keys.new_key() + "\n", encoding="utf-8")
    return DEV_KEY_FILE.read_text(encoding="utf-8").strip()


def fill_in_the_defaults(env: MutableMapping[str, str]) -> list[str]:
    """An in-memory store and a key of its own where ENV names none; what was filled in."""
    notes = []
    if not any(name.startswith("MONGO_") for name in env):
        env["MONGO_URI"] = IN_MEMORY_URI
        notes += [
            "No MongoDB configuration: using an IN-MEMORY store (mongomock).",
            "Data is lost on exit. Set MONGO_URI, or MONGO_HOST, MONGO_USER, MONGO_PASSWORD.",
        ]
    if env.get("MONGO_URI") == IN_MEMORY_URI and not {"API_KEYS", "API_KEYS_FILE"} & set(env):
        key = development_key()
        env["API_KEYS"] = keys.key_line("dev", "write", key)
        notes += [f"API key (write), also in {DEV_KEY_FILE}: {key}"]
    return notes


def main() -> None:
    os.environ.setdefault("LOG_FORMAT", "text")
    notes = fill_in_the_defaults(os.environ)
    if notes:
        banner = "!" * 78
        lines = "\n".join(f"  {note}" for note in notes)
        print(f"{banner}\n{lines}\n{banner}", file=sys.stderr)
    try:
        app = create_app()
    except ConfigError as exc:
        sys.exit(f"usersapi: {exc}")
    app.run(host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ.get("PORT", "8000")))


if __name__ == "__main__":
    main()
