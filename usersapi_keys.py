"""The API key file and new keys, by the standard library alone: the API reads the file with
it (usersapi_auth), and stack/api_keys.py writes it with the same rules on a host that has
none of the API's requirements.

A key file holds one key per line, ``NAME SCOPE sha256:HEX``: a name (1 to 64 of A-Z a-z 0-9
. _ -, unique in the file), a scope (``read``, or ``write``, which includes read) and the
SHA-256 of the key's UTF-8 text as 64 lower-case hex digits. Blank lines and lines starting
with ``#`` are ignored. The file holds no key itself, so a leaked file opens nothing.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

# A recognisable prefix, so secret scanners and people can tell a leaked key for what it is.
KEY_PREFIX = "usersapi_"
KEY_BYTES = 32
SCOPES = ("read", "write")
NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


class KeyFileError(ValueError):
    """A line of a key file that is not a key line. The message never repeats the line's
    third field: someone may have pasted a key there instead of its digest."""


@dataclass(frozen=True)
class ApiKey:
    name: str
    scope: str
    digest: bytes  # SHA-256 of the key
    line: int = 0  # its line in the key file

    def may_write(self) -> bool:
        return self.scope == "write"

    def text(self) -> str:
        """Its line in a key file."""
        return f"{self.name} {self.scope} sha256:{self.digest.hex()}"


def digest_of(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def check_name(name: str, scope: str | None = None) -> None:
    """NAME (and SCOPE, when given) as a key line must have them."""
    if not NAME.fullmatch(name):
        raise KeyFileError(
            f"the name must be 1 to 64 letters, digits, '.', '_' or '-', not {name!r}"
        )
    if scope is not None and scope not in SCOPES:
        raise KeyFileError(f"key {name}: the scope must be read or write, not {scope!r}")


def parse_key_line(line: str, number: int = 0) -> ApiKey:
    fields = line.split()
    if len(fields) != 3:
        raise KeyFileError(f"expected NAME SCOPE sha256:HEX, found {len(fields)} fields")
    name, scope, digest = fields
    check_name(name, scope)
    if not DIGEST.fullmatch(digest):
        raise KeyFileError(
            f"key {name}: the third field must be sha256: and 64 lower-case hex digits "
            "(the SHA-256 of the key, never the key itself)"
        )
    return ApiKey(name, scope, bytes.fromhex(digest.removeprefix("sha256:")), number)


def parse_keys(text: str) -> tuple[ApiKey, ...]:
    """Every key of a key file; KeyFileError names the first bad line by its number."""
    keys: dict[str, ApiKey] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            key = parse_key_line(line, number)
        except KeyFileError as exc:
            raise KeyFileError(f"line {number}: {exc}") from None
        if key.name in keys:
            first = keys[key.name].line
            raise KeyFileError(f"line {number}: the name {key.name} is already on line {first}")
        keys[key.name] = key
    return tuple(keys.values())


def new_key() -> str:
    """A new key: the prefix and 32 random bytes as URL-safe base64 (43 characters)."""
    return KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)


def key_line(name: str, scope: str, key: str) -> str:
    """KEY's line in a key file; KeyFileError when NAME or SCOPE could not stand in one."""
    check_name(name, scope)
    return ApiKey(name, scope, digest_of(key)).text()
