"""A modest, steady load on the API through the ingress, for the end-to-end run.

  load.py run BASE_URL --key-file F --out FILE [--rate N]
      one thread creates users (POST /users), one reads (GET /users?limit=1), each N requests
      a second, until SIGTERM or SIGINT; then writes what happened to FILE (JSON). A 503 or a
      429 with Retry-After is honoured: the request is sent again after that many seconds
      (the API answers 503 while a restore holds the lock, and touches no user; the ingress
      429 past its limits). Anything else that is not a success, or no answer at all, is a
      failed request.
  load.py check BASE_URL FILE --key-file F [--replaced-from ISO_TIME] [--outage]
      PASS/FAIL lines: no request failed, and every acknowledged write is there afterwards.
      With --replaced-from (when a restore's mongorestore began), a write sent before it was
      replaced by the restore, as a restore means to; every write sent at or after it must
      be there. With --outage (a change that stops the ingress), failed requests are counted
      and the longest time without a successful answer measured, not refused.

Every request goes through stack/api_checks.py's request(), and so gets its headers, the API
key (read from F) among them, from one place.
"""

from __future__ import annotations

import argparse
import itertools
import json
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from http.client import HTTPException
from pathlib import Path
from types import FrameType
from typing import Any

import api_checks
from api_checks import Answer, line, read_key, request

RETRIES = 30  # a 503 with Retry-After: 5 is honoured this many times at most (2.5 minutes)
WAITS = {503, 429}  # answers whose Retry-After is honoured


@dataclass
class Write:
    user_id: str
    email: str
    sent_at: float  # when the attempt that was acknowledged was sent
    acked_at: float


@dataclass
class Results:
    requests: int = 0
    writes: list[Write] = field(default_factory=list)
    reads: int = 0
    waits: int = 0  # 503 or 429 + Retry-After answers honoured
    failures: list[str] = field(default_factory=list)
    answered: list[float] = field(default_factory=list)  # when each success came
    started: float = 0.0
    stopped: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self))


LOCK = threading.Lock()  # the two threads' updates of Results


def patiently(
    results: Results, method: str, base: str, path: str, body: object = None
) -> tuple[Answer, float] | None:
    """The request, sent again after each 503 with Retry-After; the answer and when the
    answered attempt was sent, or None after recording why it failed."""
    for _ in range(RETRIES):
        sent = time.time()
        try:
            answer = request(base, method, path, body, timeout=30)
        except (OSError, HTTPException) as exc:
            with LOCK:
                results.requests += 1
                results.failures.append(
                    f"{time.time():.1f} {method} {path}: {type(exc).__name__}: {exc}"
                )
            return None
        with LOCK:
            results.requests += 1
        retry_after = answer.header("Retry-After")
        if answer.status in WAITS and retry_after.isdigit():
            with LOCK:
                results.waits += 1
            time.sleep(int(retry_after))
            continue
        if answer.status >= 300:
            with LOCK:
                results.failures.append(
                    f"{time.time():.1f} {method} {path} -> {answer.status} {answer.body[:200]!r}"
                )
            return None
        with LOCK:
            results.answered.append(time.time())
        return answer, sent
    with LOCK:
        results.failures.append(f"{method} {path}: still 503 after {RETRIES} tries")
    return None


def writer(results: Results, base: str, pause: float, stop: threading.Event) -> None:
    number = 0
    while not stop.is_set():
        number += 1
        tag = f"load{time.time_ns() % 10**12}n{number}"
        user = {"name": f"Load {number}", "email": f"{tag}@example.com", "username": tag}
        done = patiently(results, "POST", base, "/users", user)
        if done is not None:
            answer, sent = done
            created = answer.json() or {}
            with LOCK:
                results.writes.append(Write(str(created["id"]), user["email"], sent, time.time()))
        stop.wait(pause)


def reader(results: Results, base: str, pause: float, stop: threading.Event) -> None:
    while not stop.is_set():
        if patiently(results, "GET", base, "/users?limit=1") is not None:
            with LOCK:
                results.reads += 1
        stop.wait(pause)


def run(base: str, out: Path, rate: float) -> int:
    stop = threading.Event()

    def finish(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, finish)
    signal.signal(signal.SIGINT, finish)
    results = Results(started=time.time())
    threads = [
        threading.Thread(target=work, args=(results, base, 1 / rate, stop))
        for work in (writer, reader)
    ]
    for thread in threads:
        thread.start()
    while not stop.is_set():
        stop.wait(0.5)
    for thread in threads:
        thread.join()
    results.stopped = time.time()
    out.write_text(results.to_json())
    return 0


def longest_gap(data: dict[str, Any]) -> float:
    """The longest time, in seconds, without a successful answer."""
    times = sorted([float(data["started"]), *map(float, data["answered"]), float(data["stopped"])])
    return max(b - a for a, b in itertools.pairwise(times))


def check(base: str, saved: Path, replaced_from: float | None, *, outage: bool = False) -> int:
    data = json.loads(saved.read_text())
    writes = [Write(**w) for w in data["writes"]]
    seconds = data["stopped"] - data["started"]
    failures = data["failures"]
    summary = (
        f"load: {data['requests']} requests in {seconds:.0f} s "
        f"({data['requests'] / max(seconds, 1):.1f}/s: {len(writes)} acknowledged writes, "
        f"{data['reads']} reads), {data['waits']} answers 503 or 429 + Retry-After honoured, "
        f"{len(failures)} failed"
    )
    if outage:
        lines = [
            line(
                f"{summary} while the ingress was replaced (stop-first); the longest time "
                f"without an answer: {longest_gap(data):.1f} s",
                ok=bool(writes),
            )
        ]
    else:
        lines = [
            line(
                summary + "".join(f"; {f}" for f in failures[:3]),
                ok=not failures and bool(writes),
            )
        ]
    kept = [w for w in writes if replaced_from is None or w.sent_at >= replaced_from]
    lost = [w for w in kept if not there(base, w)]
    replaced = [w for w in writes if w not in kept]
    gone = sum(not there(base, w) for w in replaced)
    restore = (
        ""
        if replaced_from is None
        else f" (sent after the restore began); {gone} of the {len(replaced)} sent before it "
        "were replaced by the restore, as a restore means to"
    )
    lines.append(
        line(
            f"load: {len(kept) - len(lost)} of {len(kept)} acknowledged writes are there "
            f"afterwards{restore}" + "".join(f"; lost {w.user_id} {w.email}" for w in lost[:3]),
            ok=not lost and bool(kept),
        )
    )
    print("\n".join(lines))
    return 0 if all(text.startswith("PASS") for text in lines) else 1


def there(base: str, write: Write) -> bool:
    """Whether the write is there (the reads pace themselves by the ingress's Retry-After)."""
    for _ in range(RETRIES):
        answer = request(base, "GET", f"/users/{write.user_id}")
        retry_after = answer.header("Retry-After")
        if answer.status in WAITS and retry_after.isdigit():
            time.sleep(int(retry_after))
            continue
        return answer.status == 200 and (answer.json() or {}).get("email") == write.email
    return False


def main(argv: list[str] | None = None) -> int:
    top = argparse.ArgumentParser(prog="load.py", description="a modest load on the API")
    sub = top.add_subparsers(dest="command", required=True)
    start = sub.add_parser("run")
    start.add_argument("url")
    start.add_argument("--out", type=Path, required=True)
    start.add_argument("--rate", type=float, default=2.0, help="requests a second per thread")
    verify = sub.add_parser("check")
    verify.add_argument("url")
    verify.add_argument("saved", type=Path)
    verify.add_argument("--replaced-from", default=None, help="ISO time the restore began")
    verify.add_argument("--outage", action="store_true", help="count failures, measure the gap")
    for command in (start, verify):
        command.add_argument("--key-file", type=Path, required=True, help="the API key's file")
    args = top.parse_args(argv)
    api_checks.KEY = read_key(args.key_file)
    base = args.url.rstrip("/")
    if args.command == "run":
        return run(base, args.out, args.rate)
    since = datetime.fromisoformat(args.replaced_from).timestamp() if args.replaced_from else None
    return check(base, args.saved, since, outage=args.outage)


if __name__ == "__main__":
    sys.exit(main())
