#!/usr/bin/env python3
"""The API's key file for stack/swarm.sh (secrets, api-key, deploy, the drill), Python's
standard library only, so it runs wherever the script does.

The file's rules and new keys are the API's own (usersapi_keys, beside stack/: one line a
key, `NAME SCOPE sha256:HEX`, never the key itself; a key is `usersapi_` and 32 random bytes
as URL-safe base64).

  api_keys.py check FILE                      exit 0 and the names, or 1 naming the bad line
  api_keys.py new NAME SCOPE                  a new key's line, then the key (two lines)
  api_keys.py ensure FILE NAME SCOPE KEYFILE  KEYFILE's key has its line in FILE: a missing
                                              KEYFILE gets a new key (mode 600); FILE is made
                                              (mode 600) or its NAME line set
  api_keys.py add FILE NAME SCOPE --out NEW   FILE with a new key's line in NEW (mode 600);
                                              prints the key, which is stored nowhere
  api_keys.py revoke FILE NAME --out NEW      FILE without NAME's line in NEW (mode 600)

Nothing is written unless FILE is valid and the change is allowed; errors go to stderr with
exit status 1 and never repeat a line's third field (a key may have been pasted there).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# The API's module for its key file, from the project's root (stack/..): standard library
# only, like this script.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from usersapi_keys import (
    KEY_PREFIX,
    ApiKey,
    KeyFileError,
    check_name,
    key_line,
    new_key,
    parse_keys,
)

HEADER = (
    "# API keys: NAME SCOPE sha256:<SHA-256 of the key>. Made by stack/swarm.sh; no key is "
    "kept here.\n"
)


def read(path: Path) -> tuple[str, tuple[ApiKey, ...]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise KeyFileError(f"{path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise KeyFileError(f"{path}: not UTF-8 text") from None
    try:
        return text, parse_keys(text)
    except KeyFileError as exc:
        raise KeyFileError(f"{path}: {exc}") from None


def write_private(path: Path, text: str, *, exclusive: bool = False) -> None:
    """TEXT into PATH, readable by its owner only from the first byte."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    path.chmod(0o600)


def without(text: str, name: str) -> str:
    """TEXT without the key line named NAME (other lines, comments included, as they were)."""
    kept = [
        line
        for line in text.splitlines(keepends=True)
        if not (line.split()[:1] == [name] and not line.lstrip().startswith("#"))
    ]
    return "".join(kept)


def appended(text: str, line: str) -> str:
    if text and not text.endswith("\n"):
        text += "\n"
    return text + line + "\n"


def check(path: Path) -> str:
    _, keys = read(path)
    return f"{path}: {len(keys)} keys: " + " ".join(f"{k.name} ({k.scope})" for k in keys)


def ensure(path: Path, name: str, scope: str, key_file: Path) -> str:
    check_name(name, scope)
    text, keys = read(path) if path.exists() else (HEADER, ())
    said = []
    if not key_file.exists() or key_file.stat().st_size == 0:
        write_private(key_file, new_key() + "\n")
        said.append(f"generated the {scope} key {name} in {key_file} (mode 600)")
    key = key_file.read_text(encoding="utf-8").strip()
    if not key.startswith(KEY_PREFIX) or any(c.isspace() for c in key):
        raise KeyFileError(f"{key_file} does not hold one key ({KEY_PREFIX}...)")
    line = key_line(name, scope, key)
    current = next((k for k in keys if k.name == name), None)
    if current is not None and current.text() == line:
        said.append(f"{name} ({scope}) is in {path}, reusing it")
        return "; ".join(said)
    write_private(path, appended(without(text, name), line))
    what = "set" if current is not None else "added"
    said.append(f"{what} the line of {name} ({scope}) in {path}")
    return "; ".join(said)


def add(path: Path, name: str, scope: str, out: Path) -> str:
    check_name(name, scope)
    text, keys = read(path)
    existing = next((k for k in keys if k.name == name), None)
    if existing is not None:
        raise KeyFileError(
            f"a key named {name} exists already ({path}, line {existing.line}): choose "
            f"another name, or revoke it first (api-key --revoke {name})"
        )
    key = new_key()
    write_private(out, appended(text, key_line(name, scope, key)), exclusive=True)
    return key


def revoke(path: Path, name: str, out: Path, kept: tuple[str, ...]) -> str:
    check_name(name)
    text, keys = read(path)
    if name not in {k.name for k in keys}:
        names = " ".join(k.name for k in keys) or "none"
        raise KeyFileError(f"no key named {name} in {path} (its keys: {names}): nothing revoked")
    if name in kept:
        raise KeyFileError(
            f"{name} is one of the stack's own keys ({', '.join(kept)}), which stack/swarm.sh "
            "itself uses (verify, the evidence): it is not revoked; to replace it, "
            "delete its file in SECRETS_DIR and run 'stack/swarm.sh secrets deploy'"
        )
    write_private(out, without(text, name), exclusive=True)
    return f"{name}: its line is removed"


def main(argv: list[str] | None = None) -> int:
    top = argparse.ArgumentParser(
        prog="api_keys.py", description=(__doc__ or "").split("\n\n", maxsplit=1)[0]
    )
    sub = top.add_subparsers(dest="command", required=True)
    sub.add_parser("check").add_argument("file", type=Path)
    cmd = sub.add_parser("new")
    cmd.add_argument("name")
    cmd.add_argument("scope")
    cmd = sub.add_parser("ensure")
    for name in ("file", "name", "scope", "key_file"):
        cmd.add_argument(name, type=Path if "file" in name else str)
    cmd = sub.add_parser("add")
    for name in ("file", "name", "scope"):
        cmd.add_argument(name, type=Path if name == "file" else str)
    cmd.add_argument("--out", type=Path, required=True)
    cmd = sub.add_parser("revoke")
    cmd.add_argument("file", type=Path)
    cmd.add_argument("name")
    cmd.add_argument("--out", type=Path, required=True)
    cmd.add_argument("--keep", action="append", default=[], help="a name that is never revoked")
    args = top.parse_args(argv)
    try:
        if args.command == "check":
            print(check(args.file))
        elif args.command == "new":
            check_name(args.name, args.scope)
            key = new_key()
            print(key_line(args.name, args.scope, key))
            print(key)
        elif args.command == "ensure":
            print(ensure(args.file, args.name, args.scope, args.key_file))
        elif args.command == "add":
            print(add(args.file, args.name, args.scope, args.out))
        else:
            print(revoke(args.file, args.name, args.out, tuple(args.keep)))
    except (KeyFileError, OSError) as exc:
        print(f"api_keys.py {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
