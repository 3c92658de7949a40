#!/usr/bin/env python3
"""A `docker` that records every call, then runs the real one; and the check of the record.

Linked as `docker` into a folder first on PATH (DOCKER_RECORD: the file that collects one JSON
array of arguments per call; REAL_DOCKER: the real binary), it records and then becomes the
real docker, stdin and stdout untouched.

  record_docker.py check FILE --context NAME --node NAME...
      PASS when every recorded call either went through the context NAME or was one of this
      machine's own (building, pushing, reading a registry or the context, its CLI's help)
      and named none of the nodes; FAIL with the calls that did not.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

# What stack/swarm.sh may ask of this machine's own engine and CLI.
LOCAL = {"build", "push", "pull", "image", "manifest", "info", "context", "version"}


def record(args: list[str]) -> None:
    with Path(os.environ["DOCKER_RECORD"]).open("a", encoding="utf-8") as log:
        log.write(json.dumps(args) + "\n")
    real = os.environ["REAL_DOCKER"]
    if Path(real).resolve() == Path(__file__).resolve():
        sys.exit("record_docker.py: REAL_DOCKER names this recorder, not docker")
    os.execv(real, [real, *args])  # noqa: S606 - becomes the real docker, as intended


def touches_a_node(call: list[str], context: str, nodes: list[str]) -> bool:
    if call[:2] == ["--context", context]:
        return False
    if call[:1] == ["--context"]:
        return True
    if not call or call[0] not in LOCAL | {"stack"}:
        return True
    if call[0] == "stack" and "--help" not in call:
        return True
    return any(node in arg for arg in call for node in nodes)


def check(saved: Path, context: str, nodes: list[str]) -> int:
    calls = [json.loads(text) for text in saved.read_text().splitlines()]
    through = [c for c in calls if c[:2] == ["--context", context]]
    bad = [c for c in calls if touches_a_node(c, context, nodes)]
    local = sorted({c[0] for c in calls if c not in through and c not in bad})
    verdict = "PASS" if calls and not bad else "FAIL"
    print(
        f"{verdict}  {len(calls)} docker calls of stack/swarm.sh: {len(through)} through the "
        f"context {context}, {len(calls) - len(through) - len(bad)} on this machine "
        f"({', '.join(local)}); {len(bad)} touched a node container"
        + "".join(f"; {' '.join(c)[:160]}" for c in bad[:5])
    )
    return 0 if verdict == "PASS" else 1


def main(argv: list[str]) -> int:
    if Path(argv[0]).name == "docker":
        record(argv[1:])
    parser = argparse.ArgumentParser(prog="record_docker.py")
    sub = parser.add_subparsers(dest="command", required=True)
    checking = sub.add_parser("check")
    checking.add_argument("saved", type=Path)
    checking.add_argument("--context", required=True)
    checking.add_argument("--node", action="append", required=True)
    args = parser.parse_args(argv[1:])
    return check(args.saved, args.context, args.node)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
