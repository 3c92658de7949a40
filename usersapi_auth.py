"""API keys of the users API: the check of each request's key, and a command for new keys.

The keys come from a key file (usersapi_keys: one ``NAME SCOPE sha256:HEX`` line a key, never
the key itself). A request presents its key as ``Authorization: Bearer KEY``.

``require_key()`` is the first thing every /users request meets. As a command (in the
image too: ``docker run --rm IMAGE python usersapi_auth.py new NAME write``):

    python usersapi_auth.py new NAME read|write   a new key: its line, then the key itself
    python usersapi_auth.py check FILE            exit 0 if FILE is a valid key file
"""

from __future__ import annotations

import hmac
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from flask import g, request

from usersapi_keys import (
    ApiKey,
    KeyFileError,
    digest_of,
    key_line,
    new_key,
    parse_keys,
)
from usersapi_problems import ApiError
from usersapi_telemetry import record_refusal

# RFC 6750's b64token, at most 512 characters: anything else cannot be a key of ours.
BEARER_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]{1,512}=*")

Refusal = Literal["missing", "invalid", "insufficient_scope"]


@dataclass(frozen=True)
class RefusalAnswer:
    """How a refusal is answered: the status, the problem's detail and, as RFC 6750 asks,
    the WWW-Authenticate challenge (an error code only once a token was presented)."""

    status: int
    detail: str
    challenge: str


REALM = 'Bearer realm="usersapi"'
REFUSALS: dict[Refusal, RefusalAnswer] = {
    "missing": RefusalAnswer(401, "send an API key: Authorization: Bearer KEY", REALM),
    "invalid": RefusalAnswer(401, "the API key is not valid", f'{REALM}, error="invalid_token"'),
    "insufficient_scope": RefusalAnswer(
        403,
        "this API key may only read: writing needs a key with the write scope",
        f'{REALM}, error="insufficient_scope", scope="write"',
    ),
}


def bearer_token(authorization: str | None) -> tuple[str, Refusal | None]:
    """The token of an Authorization header, or why there is none: "missing" when no
    credentials were sent or another scheme was used (RFC 6750 then wants no error code),
    "invalid" when a Bearer token is malformed."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer":
        return "", "missing"
    token = token.strip()
    return (token, None) if BEARER_TOKEN.fullmatch(token) else ("", "invalid")


@dataclass(frozen=True)
class Outcome:
    """The key a request presented (None if none of ours), and why it is refused, if it is."""

    key: ApiKey | None
    refusal: Refusal | None = None


def check(authorization: str | None, keys: tuple[ApiKey, ...], *, write: bool) -> Outcome:
    """Whether an Authorization header presents one of KEYS whose scope allows the request.
    Every configured digest is compared, in constant time, so the answer takes as long
    whichever key (or part of one) was right."""
    token, refusal = bearer_token(authorization)
    if refusal is not None:
        return Outcome(None, refusal)
    presented = digest_of(token)
    found = None
    for key in keys:
        if hmac.compare_digest(presented, key.digest):
            found = key
    if found is None:
        return Outcome(None, "invalid")
    if write and not found.may_write():
        return Outcome(found, "insufficient_scope")
    return Outcome(found)


WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
log = logging.getLogger("usersapi")


def require_key(keys: tuple[ApiKey, ...]) -> None:
    """Refuse the current request unless it presents one of KEYS whose scope allows its
    method (GET and HEAD read; POST, PUT, PATCH and DELETE write). Called before anything
    else happens to the request: nothing is parsed or asked of MongoDB for a caller
    without such a key. The access line names the key (g.api_key_name), never the key."""
    outcome = check(
        request.headers.get("Authorization"), keys, write=request.method in WRITE_METHODS
    )
    g.api_key_name = outcome.key.name if outcome.key else None
    if outcome.refusal is None:
        return
    answer = REFUSALS[outcome.refusal]
    record_refusal(outcome.refusal)
    reason = outcome.refusal.replace("_", " ")
    log.warning("refused %s %s: %s key", request.method, request.path, reason)
    raise ApiError(answer.status, answer.detail, headers={"WWW-Authenticate": answer.challenge})


def main(argv: list[str]) -> int:
    usage = "usage: python usersapi_auth.py new NAME read|write | check FILE"
    try:
        match argv:
            case ["new", name, scope]:
                key = new_key()
                print(key_line(name, scope, key))
                print(key)
            case ["check", path]:
                keys = parse_keys(Path(path).read_text(encoding="utf-8"))
                print(f"{path}: {len(keys)} keys: {' '.join(key.name for key in keys)}")
            case ["-h" | "--help" | "help"]:
                print(f"{usage}\n\n{__doc__}")
            case _:
                print(usage, file=sys.stderr)
                return 2
    except (KeyFileError, OSError) as exc:
        print(f"usersapi_auth.py: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
