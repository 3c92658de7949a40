"""What a client of the API sees, for verify and the drill: one PASS/FAIL line per check.

  api_checks.py [--key-file FILE] COMMAND ...   every request presents the API key in FILE
  api_checks.py ready URL --timeout S        GET /ready until 200
  api_checks.py redirect HTTP_URL --https-port P
  api_checks.py hsts URL | crud URL | metrics-closed URL | request-id-replaced URL
  api_checks.py race URL [--rate R]          rounds RATE_LIMIT lets through at once
  api_checks.py access URL --read-key-file FILE   no key: 401; a read key cannot write: 403
  api_checks.py burst URL --rate R --burst B  past the ingress's limit: 429, then 200 again
  api_checks.py certificate URL --cert-file FILE   the ingress serves FILE's certificate
  api_checks.py version URL --image IMAGE    /openapi.json reports the image's tag
  api_checks.py returned-ids URL PATH ID     prints the X-Request-ID values of the answer
  api_checks.py user-create URL TAG | user-delete URL ID   (prints the new user's id)
  api_checks.py drill-seed URL STATE | drill-change URL STATE | drill-locked URL |
                drill-check URL STATE        the drill's steps, on its own API

verify runs it on this machine against the ingress (https, its self-signed certificate not
checked, as `curl -k`); the drill feeds it to the api image's Python in a task on the stack's
network, against the drill's own API (http). Every request goes through request() and gets
its headers from request_headers(): a header every request needs is added there, once. The
API key is read from a file (--key-file), so it is on no command line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import socket
import ssl
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from http.client import HTTPConnection, HTTPException, HTTPSConnection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

TIMEOUT = 10.0
RACERS = 24
RACE_ROUNDS = 10
USERS_PAGE = 500
# The API key every request presents (--key-file, or a program that imports this module).
KEY = ""
REALM = 'Bearer realm="usersapi"'


def request_headers(
    extra: Mapping[str, str] | None = None, *, json_body: bool = False, key: str | None = None
) -> dict[str, str]:
    """The headers of every request: the one place to add a header all of them need. KEY
    (the module's, unless another is given; "" for none) goes in Authorization."""
    headers = {"Accept": "application/json"}
    presented = KEY if key is None else key
    if presented:
        headers["Authorization"] = f"Bearer {presented}"
    if json_body:
        headers["Content-Type"] = "application/json"
    headers.update(extra or {})
    return headers


def read_key(path: Path) -> str:
    """The key in PATH (its one line)."""
    return path.read_text(encoding="utf-8").strip()


def tls_context() -> ssl.SSLContext:
    """The stack's certificate is self-signed: like `curl -k`, it is not checked here."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str:
        return next((v for k, v in self.headers if k.lower() == name.lower()), "")

    def all_headers(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


def connection(base: str, timeout: float) -> HTTPConnection:
    parts = urlsplit(base)
    host = parts.hostname or "localhost"
    if parts.scheme == "https":
        return HTTPSConnection(host, parts.port or 443, timeout=timeout, context=tls_context())
    return HTTPConnection(host, parts.port or 80, timeout=timeout)


def request(
    base: str,
    method: str,
    path: str,
    body: Any = None,
    *,
    headers: Mapping[str, str] | None = None,
    timeout: float = TIMEOUT,
    key: str | None = None,
) -> Answer:
    """One request to BASE + PATH, JSON BODY if given, on a connection of its own, with KEY
    (default: the module's KEY; "" for none)."""
    data = None if body is None else json.dumps(body).encode()
    conn = connection(base, timeout)
    try:
        conn.request(
            method,
            urlsplit(base).path.rstrip("/") + path,
            body=data,
            headers=request_headers(headers, json_body=data is not None, key=key),
        )
        reply = conn.getresponse()
        return Answer(reply.status, reply.getheaders(), reply.read())
    finally:
        conn.close()


def line(text: str, *, ok: bool) -> str:
    return f"{'PASS' if ok else 'FAIL'}  {text}"


def new_user(tag: str, name: str = "Verify") -> dict[str, str]:
    return {"name": f"{name} {tag}", "email": f"{tag}@example.com", "username": tag}


def unique_tag(prefix: str) -> str:
    return f"{prefix}{time.time_ns() % 10**12}"


# --- verify -----------------------------------------------------------------------------------
def poll(base: str, path: str, seconds: float, interval: float) -> tuple[bool, float, str]:
    """GET PATH every INTERVAL seconds until it answers 200 or SECONDS have passed: whether it
    did, after how long, and the last answer (a status or an error)."""
    start = time.monotonic()
    while True:
        try:
            answer = request(base, "GET", path, timeout=5)
            last = str(answer.status)
            if answer.status == 200:
                return True, time.monotonic() - start, last
        except (OSError, HTTPException) as exc:
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() - start >= seconds:
            return False, seconds, last
        time.sleep(interval)


def ready(base: str, timeout: float) -> list[str]:
    ok, waited, last = poll(base, "/ready", timeout, 2)
    if ok:
        return [line(f"API ready: GET {base}/ready -> 200 after {waited:.0f} s", ok=True)]
    detail = f"API not ready at {base} after {timeout:.0f} s (last GET /ready -> {last})"
    return [line(detail, ok=False)]


def redirect(http_base: str, https_port: int) -> list[str]:
    host = urlsplit(http_base).hostname
    port = "" if https_port == 443 else f":{https_port}"
    want = f"https://{host}{port}/users?limit=1"
    answer = request(http_base, "GET", "/users?limit=1")
    got = f"{answer.status} {answer.header('Location')}"
    ok = answer.status == 301 and answer.header("Location") == want
    return [
        line(
            f"http redirects to https: GET {http_base}/users?limit=1 -> {got}"
            + ("" if ok else f", expected 301 {want}"),
            ok=ok,
        )
    ]


def hsts(base: str) -> list[str]:
    value = request(base, "GET", "/health").header("Strict-Transport-Security")
    return [
        line(
            f"https answers with HSTS: Strict-Transport-Security: {value or 'missing'}",
            ok=bool(value),
        )
    ]


def crud(base: str) -> list[str]:
    tag = unique_tag("v")
    codes: list[str] = []
    ok = True

    def record(what: str, answer: Answer, want: int) -> Answer:
        nonlocal ok
        codes.append(f"{what} {answer.status}")
        ok = ok and answer.status == want
        return answer

    created = record("create", request(base, "POST", "/users", new_user(tag)), 201)
    user = created.json() or {}
    uid, etag = str(user.get("id", "")), created.header("ETag")
    read = record("read", request(base, "GET", f"/users/{uid}"), 200)
    ok = ok and (read.json() or {}).get("email") == f"{tag}@example.com"
    listed = record("list", request(base, "GET", "/users?limit=5&offset=0"), 200)
    ok = ok and "total" in (listed.json() or {})
    found = record("search", request(base, "GET", f"/users/search?q={tag}"), 200)
    ok = ok and uid in [item.get("id") for item in (found.json() or {}).get("items", [])]
    edited = record(
        "edit",
        request(
            base, "PATCH", f"/users/{uid}", {"name": "Verify Edited"}, headers={"If-Match": etag}
        ),
        200,
    )
    ok = ok and (edited.json() or {}).get("name") == "Verify Edited"
    stale = request(
        base, "PATCH", f"/users/{uid}", {"name": "Verify Stale"}, headers={"If-Match": etag}
    )
    duplicate = request(base, "POST", "/users", new_user(tag, "Dup") | {"username": f"{tag}d"})
    record("delete", request(base, "DELETE", f"/users/{uid}"), 204)
    record("read-after-delete", request(base, "GET", f"/users/{uid}"), 404)
    stale_title = (stale.json() or {}).get("title", "")
    dup_title = (duplicate.json() or {}).get("title", "")
    return [
        line(f"users CRUD over {urlsplit(base).scheme}: {', '.join(codes)}", ok=ok),
        line(
            f"optimistic concurrency: ETag {etag} -> {edited.header('ETag')}, PATCH with the "
            f"stale If-Match -> {stale.status} {stale_title}",
            ok=etag == '"1"' and stale.status == 412,
        ),
        line(
            f"duplicate email: POST /users -> {duplicate.status} {dup_title}",
            ok=duplicate.status == 409,
        ),
    ]


def image_tag(image: str) -> str:
    last = image.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else "latest"


def version(base: str, image: str) -> list[str]:
    reported = str(
        ((request(base, "GET", "/openapi.json").json() or {}).get("info") or {}).get("version", "")
    )
    want = image_tag(image) if image else ""
    return [
        line(
            f"the API reports version {reported or '?'} in /openapi.json, the tag of the image "
            f"it runs ({image or 'unknown'})",
            ok=bool(want) and reported == want,
        )
    ]


def returned_ids(base: str, path: str, request_id: str) -> str:
    return " ".join(
        request(base, "GET", path, headers={"X-Request-ID": request_id}).all_headers("X-Request-ID")
    )


def request_id_replaced(base: str) -> list[str]:
    insane = "not sane; <script>"
    ids = returned_ids(base, "/health", insane)
    return [
        line(
            f"an insane X-Request-ID is replaced: '{insane}' -> X-Request-ID [{ids}]",
            ok=re.fullmatch(r"[0-9a-f]{32}", ids) is not None,
        )
    ]


def metrics_closed(base: str) -> list[str]:
    answer = request(base, "GET", "/metrics")
    kind = answer.header("Content-Type")
    ok = (
        answer.status == 404
        and kind == "application/problem+json"
        and b"usersapi_http_requests" not in answer.body
    )
    return [
        line(
            f"/metrics is closed at the ingress: GET {base}/metrics -> {answer.status} {kind}",
            ok=ok,
        )
    ]


# --- access control, limits, the certificate ---------------------------------------------------
def challenge_line(
    what: str, answer: Answer, status: int, challenge: str, *, ok: bool = True
) -> str:
    """A refusal as RFC 6750 says: STATUS, a problem document, the CHALLENGE exactly."""
    got = answer.header("WWW-Authenticate")
    kind = answer.header("Content-Type")
    right = answer.status == status and got == challenge and kind == "application/problem+json"
    return line(
        f"{what} -> {answer.status} {kind}, WWW-Authenticate: {got or 'none'}", ok=ok and right
    )


def access(base: str, read_key_file: Path) -> list[str]:
    """No key and an unknown key get 401, a read key reads and gets 403 on a write (which
    writes nothing); answers from /users are never stored by a cache."""
    reader = read_key(read_key_file)
    anonymous = request(base, "GET", "/users?limit=1", key="")
    unknown = request(base, "GET", "/users?limit=1", key="usersapi_" + "x" * 43)
    reading = request(base, "GET", "/users?limit=1", key=reader)
    tag = unique_tag("ro")
    writing = request(base, "POST", "/users", new_user(tag), key=reader)
    found = request(base, "GET", f"/users/search?q={tag}")
    created = (found.json() or {}).get("total") if found.status == 200 else None
    stores = {
        "no key": anonymous.header("Cache-Control"),
        "read key": reading.header("Cache-Control"),
        "write key": found.header("Cache-Control"),
    }
    return [
        challenge_line("GET /users without a key", anonymous, 401, REALM),
        challenge_line(
            "GET /users with an unknown key", unknown, 401, f'{REALM}, error="invalid_token"'
        ),
        line(f"a read key reads: GET /users -> {reading.status}", ok=reading.status == 200),
        challenge_line(
            f"a read key cannot write (the user it sent: {created} found afterwards): POST /users",
            writing,
            403,
            f'{REALM}, error="insufficient_scope", scope="write"',
            ok=created == 0,
        ),
        line(
            "answers from /users are never stored by a cache: Cache-Control "
            + ", ".join(f"{who}: {value or 'none'}" for who, value in stores.items()),
            ok=all(value == "no-store" for value in stores.values()),
        ),
    ]


def burst(base: str, rate: int, size: int) -> list[str]:
    """GET /health on one keep-alive connection, as fast as it answers, until the ingress
    refuses one (429) or far past RATE + SIZE; then, after the answer's Retry-After, one more
    must pass. Afterwards it waits until the limit has forgotten the burst, so the checks
    that follow start with all of it."""
    conn = connection(base, TIMEOUT)
    path = urlsplit(base).path.rstrip("/") + "/health"
    sent, refused, statuses = 0, None, set()
    start = time.monotonic()
    try:
        while sent < 3 * (size + rate) and refused is None:
            conn.request("GET", path, headers=request_headers(key=""))
            reply = conn.getresponse()
            answer = Answer(reply.status, reply.getheaders(), reply.read())
            sent += 1
            statuses.add(answer.status)
            if answer.status == 429:
                refused = answer
    finally:
        conn.close()
    took = time.monotonic() - start
    if refused is None:
        return [
            line(f"burst: {sent} requests in {took:.1f} s, none refused ({statuses})", ok=False)
        ]
    retry = refused.header("Retry-After")
    wait = int(retry) if retry.isdigit() else 1
    time.sleep(wait)
    again = request(base, "GET", "/health", key="")
    time.sleep((size + 1) / rate)
    problem = (refused.json() or {}).get("title", "") if refused.body else ""
    return [
        line(
            f"a burst beyond the ingress's limit ({rate} r/s, burst {size}): request {sent} of "
            f"{took:.1f} s -> 429 {refused.header('Content-Type')} {problem}, Retry-After: "
            f"{retry or 'none'}; after {wait} s GET /health -> {again.status}",
            ok=retry.isdigit()
            and refused.header("Content-Type") == "application/problem+json"
            and again.status == 200,
        )
    ]


def fingerprint(der: bytes) -> str:
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def certificate(base: str, cert_file: Path, kind: str) -> list[str]:
    """The certificate the ingress serves to PUBLIC_HOST (SNI) is the first one of CERT_FILE."""
    parts = urlsplit(base)
    host = parts.hostname or "localhost"
    pem = cert_file.read_text(encoding="ascii")
    first = pem[: pem.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")]
    want = fingerprint(ssl.PEM_cert_to_DER_cert(first))
    with socket.create_connection((host, parts.port or 443), timeout=TIMEOUT) as raw:
        server_name = None if re.fullmatch(r"[0-9.]+|.*:.*", host) else host
        with tls_context().wrap_socket(raw, server_hostname=server_name) as tls:
            served = tls.getpeercert(binary_form=True) or b""
    got = fingerprint(served)
    return [
        line(
            f"the ingress serves {kind} ({cert_file.name}): SHA-256 fingerprint {got[:23]}..."
            + ("" if got == want else f", expected {want[:23]}..."),
            ok=got == want,
        )
    ]


# --- the race ---------------------------------------------------------------------------------
class Racer:
    """One PATCH on a connection of its own, sent but for its last byte until release().

    Over https the last byte is encrypted beforehand (TLS through memory buffers), so
    releasing it is one write of ready bytes to the TCP socket: releasing all of them takes
    well under the time the API needs to answer one."""

    def __init__(self, base: str, path: str, body: bytes, headers: Mapping[str, str]) -> None:
        parts = urlsplit(base)
        host = parts.hostname or "localhost"
        secure = parts.scheme == "https"
        self.sock = socket.create_connection(
            (host, parts.port or (443 if secure else 80)), timeout=20
        )
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = (
            tls_context().wrap_bio(self.incoming, self.outgoing, server_hostname=host)
            if secure
            else None
        )
        if self.tls is not None:
            self.handshake(self.tls)
        head = [
            f"PATCH {path} HTTP/1.1",
            f"Host: {parts.netloc}",
            f"Content-Length: {len(body)}",
            "Connection: close",
        ]
        head += [
            f"{name}: {value}" for name, value in request_headers(headers, json_body=True).items()
        ]
        self.sock.sendall(self.wire(("\r\n".join(head) + "\r\n\r\n").encode() + body[:-1]))
        self.last = self.wire(body[-1:])
        self.received = b""

    def handshake(self, tls: ssl.SSLObject) -> None:
        while True:
            try:
                tls.do_handshake()
            except ssl.SSLWantReadError:
                self.sock.sendall(self.outgoing.read())
                self.incoming.write(self.sock.recv(65536))
            else:
                self.sock.sendall(self.outgoing.read())
                return

    def wire(self, data: bytes) -> bytes:
        """DATA as it goes on the wire."""
        if self.tls is None:
            return data
        self.tls.write(data)
        return self.outgoing.read()

    def take(self, raw: bytes) -> None:
        if self.tls is None:
            self.received += raw
            return
        self.incoming.write(raw)
        try:
            while chunk := self.tls.read(65536):
                self.received += chunk
        except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
            pass

    def answered(self) -> bool:
        """Whether any byte of the answer has arrived (read without waiting, and kept)."""
        self.sock.setblocking(False)  # noqa: FBT003 - the socket API
        try:
            self.take(self.sock.recv(65536))
        except BlockingIOError:
            pass
        finally:
            self.sock.settimeout(20)
        return bool(self.received)

    def release(self) -> None:
        self.sock.sendall(self.last)

    def status(self) -> int:
        while b"\r\n" not in self.received:
            raw = self.sock.recv(65536)
            if not raw:
                break
            self.take(raw)
        self.sock.close()
        match = re.match(rb"HTTP/1\.[01] (\d{3})", self.received)
        return int(match.group(1)) if match else 0


def race_round(base: str) -> tuple[list[int], bool]:
    """RACERS PATCHes made from version 1 of one new user, with `If-Match: "1"`: each sent but
    for its last byte, then all released together. The statuses, and whether no answer had
    arrived when the last request's last byte went out (every request was complete before
    the first answer)."""
    created = request(base, "POST", "/users", new_user(unique_tag("race"), "Race"))
    uid = str((created.json() or {}).get("id", ""))
    racers = [
        Racer(
            base, f"/users/{uid}", json.dumps({"name": f"Racer {n}"}).encode(), {"If-Match": '"1"'}
        )
        for n in range(RACERS)
    ]
    early = sum(r.answered() for r in racers)
    for racer in racers[:-1]:
        racer.release()
    # Every racer is asked (no short cut): what has arrived is kept for status().
    answered = [r.answered() for r in racers]
    overlapped = early == 0 and not any(answered)
    racers[-1].release()
    statuses = [r.status() for r in racers]
    request(base, "DELETE", f"/users/{uid}")
    return statuses, overlapped


def race(base: str, rate: float = 0) -> list[str]:
    """The compare-and-set lets exactly one of RACERS overlapping PATCHes through. A busy
    machine may take longer to release them all than the API takes to answer the first:
    such a round proves no overlap, so up to RACE_ROUNDS rounds run until one does; every
    round must let exactly one through. Between rounds a busy moment of the machine passes,
    and the ingress's limit (RATE requests a second) forgets the round's requests, so a round
    never finds its burst used up by the one before."""
    pause = 1 + (RACERS + 2) / rate if rate else 1
    results = []
    for _ in range(RACE_ROUNDS):
        statuses, overlapped = race_round(base)
        results.append((statuses.count(200), statuses.count(412), overlapped))
        if overlapped:
            break
        time.sleep(pause)
    right = all(wins == 1 and stale == RACERS - 1 for wins, stale, _ in results)
    proven = results[-1][2]
    counts = "; ".join(
        f"{w} x 200, {s} x 412" + ("" if w + s == RACERS else f", {RACERS - w - s} other")
        for w, s, _ in results
    )
    overlap = (
        f"in round {len(results)} all {RACERS} were complete (last bytes held back, then "
        "released together) before the first answer arrived"
        if proven
        else f"in none of {len(results)} rounds were all {RACERS} complete before the first "
        "answer: no race proven"
    )
    return [
        line(
            f"{RACERS} concurrent PATCHes with one If-Match, each round: {counts}; {overlap}",
            ok=right and proven,
        )
    ]


# --- the drill --------------------------------------------------------------------------------
def all_users(base: str) -> list[list[str]]:
    """Every user's [id, email], sorted."""
    found: list[list[str]] = []
    offset = 0
    while True:
        answer = request(base, "GET", f"/users?limit={USERS_PAGE}&offset={offset}")
        if answer.status != 200:
            raise RuntimeError(f"GET /users -> {answer.status}")
        items = (answer.json() or {}).get("items", [])
        found += [[str(item["id"]), str(item["email"])] for item in items]
        if len(items) < USERS_PAGE:
            return sorted(found)
        offset += USERS_PAGE


def wait_for(base: str, path: str, seconds: float) -> None:
    if not poll(base, path, seconds, 1)[0]:
        raise RuntimeError(f"GET {base}{path} did not answer 200 within {seconds:.0f} s")


def drill_seed(base: str, state_file: Path) -> list[str]:
    wait_for(base, "/ready", 120)
    tag = unique_tag("d")
    batch = [new_user(f"{tag}{c}", f"Drill {c.upper()}") for c in "abc"]
    answer = request(base, "POST", "/users", batch)
    created = answer.json() or []
    if answer.status != 201 or len(created) != len(batch):
        return [line(f"drill: creating 3 users: POST /users -> {answer.status}", ok=False)]
    backed = all_users(base)
    first = [str(created[0]["id"]), str(created[0]["email"])]
    state_file.write_text(json.dumps({"backed": backed, "first": first}))
    return [
        line(
            "drill: 3 users created through the drill's own API (POST /users -> 201); its "
            f"database holds {len(backed)}",
            ok=True,
        )
    ]


def drill_change(base: str, state_file: Path) -> list[str]:
    state = json.loads(state_file.read_text())
    first = state["first"][0]
    deleted = request(base, "DELETE", f"/users/{first}").status
    added = request(base, "POST", "/users", new_user(unique_tag("d"), "Drill D"))
    added_id = str((added.json() or {}).get("id", ""))
    state["added"] = added_id
    state_file.write_text(json.dumps(state))
    ok = deleted == 204 and added.status == 201 and all_users(base) != state["backed"]
    return [
        line(
            f"drill: after the backup, user {first} deleted ({deleted}) and user {added_id} "
            f"added ({added.status})",
            ok=ok,
        )
    ]


def drill_locked(base: str) -> list[str]:
    """While the restore holds the lock, /users answers 503 with Retry-After and touches no user."""
    write = request(base, "POST", "/users", new_user(unique_tag("l"), "Locked"))
    read = request(base, "GET", "/users?limit=1")
    detail = str((write.json() or {}).get("detail", ""))
    ok = (
        write.status == read.status == 503
        and write.header("Retry-After") == "5"
        and "restored" in detail
    )
    return [
        line(
            f"drill: while the restore holds the lock, POST /users -> {write.status} Retry-After: "
            f"{write.header('Retry-After') or 'none'} ({detail}), GET /users -> {read.status}",
            ok=ok,
        )
    ]


def drill_check(base: str, state_file: Path) -> list[str]:
    state = json.loads(state_file.read_text())
    wait_for(base, "/users?limit=1", 30)
    now = all_users(base)
    first_id, first_email = state["first"]
    same = now == state["backed"]
    lines = [
        line(
            f"drill: after restore, exactly the {len(state['backed'])} backed-up users with their "
            "ids: "
            f"{first_id} is back, {state.get('added')} is gone"
            if same
            else "drill: after restore the users differ from the backup: "
            f"{len(now)} now, {len(state['backed'])} backed up",
            ok=same,
        )
    ]
    answer = request(base, "GET", f"/users/{first_id}")
    back = answer.status == 200 and (answer.json() or {}).get("email") == first_email
    lines.append(
        line(
            f"drill: GET /users/{first_id} -> {answer.status} through the running API, no restart",
            ok=back,
        )
    )
    return lines


# --- command line -----------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="api_checks.py", description="checks of the API, as a client sees it"
    )
    top.add_argument(
        "--key-file", type=Path, help="a file holding the API key every request presents"
    )
    sub = top.add_subparsers(dest="command", required=True)
    for name in ("hsts", "crud", "metrics-closed", "request-id-replaced", "drill-locked"):
        sub.add_parser(name).add_argument("url")
    cmd = sub.add_parser("race")
    cmd.add_argument("url")
    cmd.add_argument("--rate", type=float, default=0, help="the ingress's RATE_LIMIT")
    cmd = sub.add_parser("access")
    cmd.add_argument("url")
    cmd.add_argument("--read-key-file", type=Path, required=True)
    cmd = sub.add_parser("burst")
    cmd.add_argument("url")
    cmd.add_argument("--rate", type=int, required=True)
    cmd.add_argument("--burst", type=int, required=True)
    cmd = sub.add_parser("certificate")
    cmd.add_argument("url")
    cmd.add_argument("--cert-file", type=Path, required=True)
    cmd.add_argument("--kind", default="the certificate")
    cmd = sub.add_parser("ready")
    cmd.add_argument("url")
    cmd.add_argument("--timeout", type=float, default=60)
    cmd = sub.add_parser("redirect")
    cmd.add_argument("url")
    cmd.add_argument("--https-port", type=int, required=True)
    cmd = sub.add_parser("version")
    cmd.add_argument("url")
    cmd.add_argument("--image", default="")
    cmd = sub.add_parser("returned-ids")
    for name in ("url", "path", "request_id"):
        cmd.add_argument(name)
    for name, extra in (("user-create", "tag"), ("user-delete", "user_id")):
        cmd = sub.add_parser(name)
        cmd.add_argument("url")
        cmd.add_argument(extra)
    for name in ("drill-seed", "drill-change", "drill-check"):
        cmd = sub.add_parser(name)
        cmd.add_argument("url")
        cmd.add_argument("state", type=Path)
    return top


def run(args: argparse.Namespace) -> list[str]:  # noqa: PLR0911 - one branch per subcommand
    base: str = args.url.rstrip("/")
    command: str = args.command
    simple = {
        "hsts": hsts,
        "crud": crud,
        "metrics-closed": metrics_closed,
        "request-id-replaced": request_id_replaced,
        "drill-locked": drill_locked,
    }
    if command in simple:
        return simple[command](base)
    if command == "ready":
        return ready(base, args.timeout)
    if command == "race":
        return race(base, args.rate)
    if command == "access":
        return access(base, args.read_key_file)
    if command == "burst":
        return burst(base, args.rate, args.burst)
    if command == "certificate":
        return certificate(base, args.cert_file, args.kind)
    if command == "redirect":
        return redirect(base, args.https_port)
    if command == "version":
        return version(base, args.image)
    if command == "returned-ids":
        return [returned_ids(base, args.path, args.request_id)]
    if command == "user-create":
        answer = request(base, "POST", "/users", new_user(args.tag, "Browser"))
        if answer.status != 201:
            raise RuntimeError(f"POST /users -> {answer.status}")
        return [str((answer.json() or {})["id"])]
    if command == "user-delete":
        return [str(request(base, "DELETE", f"/users/{args.user_id}").status)]
    steps = {"drill-seed": drill_seed, "drill-change": drill_change, "drill-check": drill_check}
    return steps[command](base, args.state)


def main(argv: list[str] | None = None) -> int:
    global KEY  # noqa: PLW0603 - set once, from the command line, before any request
    args = parser().parse_args(argv)
    try:
        if args.key_file is not None:
            KEY = read_key(args.key_file)
        lines = run(args)
    except (OSError, HTTPException, ValueError, KeyError, RuntimeError) as exc:
        print(f"FAIL  {args.command}: {type(exc).__name__}: {exc}")
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
