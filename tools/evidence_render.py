#!/usr/bin/env python3
"""Render evidence pictures with Playwright and the system's Chromium (tools/evidence.sh).

  evidence_render.py text --out X.png --txt X.txt --title T [--block CMD FILE RC]...
      A terminal transcript as a PNG: each block is a command (shown as "$ CMD") and the
      file holding what it printed. ANSI escapes are stripped, a carriage-return progress
      line keeps what a terminal would show last, long lines wrap, and a block longer than
      --max-lines keeps its head and tail around a marked gap. X.txt gets the full text.

  evidence_render.py url --out X.png --txt X.txt --title T --url URL [--insecure] [--key-file F]
      A screenshot of URL under a caption with each request of the navigation (the redirect
      chain, from response.request.redirected_from) and its status line. --expect-status,
      --expect-scheme, --expect-redirect and --expect-text make it exit 1 (after writing
      both files) when the page is not what was expected.

  evidence_render.py docs --out X.png --txt X.txt --title T --url BASE --query Q --key-file F
      [--insecure]
      BASE/docs with a search run from the page (browser_check.py), its 200 shown, and every
      request the page made; exit 1 if the search failed or a request left BASE's origin.

  evidence_render.py check | browser-version

The repository's absolute path never reaches a picture or a .txt: it is shown relative.
CHROMIUM names the browser binary (default /usr/bin/chromium).
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import html
import json
import os
import re
import socket
import sys
from http import HTTPStatus
from pathlib import Path

from browser_check import CHROMIUM, chromium, problems, search_from_docs
from playwright.sync_api import Browser, Error, Page, Request

ROOT = str(Path(__file__).resolve().parent.parent)
ANSI_RE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
CSS = """
body { margin: 0; background: #d0d7de; }
#win { display: inline-block; min-width: 760px; max-width: 1400px; background: #0d1117; }
.bar { display: flex; flex-wrap: wrap; gap: 4px 32px; padding: 9px 14px; background: #161b22;
       border-bottom: 1px solid #30363d; font: 13px "DejaVu Sans", sans-serif; color: #8b949e; }
.bar b { color: #e6edf3; }
.bar span { margin-left: auto; }
pre { margin: 0; padding: 12px 18px 16px; font: 14px/19px "DejaVu Sans Mono", monospace;
      color: #e6edf3; }
pre div { white-space: pre-wrap; overflow-wrap: anywhere; padding-left: 2ch; text-indent: -2ch; }
.cmd { color: #fff; font-weight: bold; } .cmd::before { content: "$ "; color: #7ee787; }
.ok { color: #3fb950; } .bad { color: #f85149; } .step { color: #d2a8ff; font-weight: bold; }
.echo { color: #79c0ff; } .dim { color: #8b949e; font-style: italic; } .gap { height: 10px; }
img { display: block; margin: 0 14px 14px; border: 1px solid #8c959f; }
"""


def relative(text: str) -> str:
    return text.replace(ROOT + "/", "").replace(ROOT, ".")


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def header(name: str, title: str, when: dt.datetime, host: str, rc: int) -> list[str]:
    stamp = when.isoformat().replace("+00:00", "Z")
    captured = f"# captured {stamp} on host {host} by tools/evidence.sh (exit status {rc})"
    return [f"# {name}: {title}", captured, ""]


def render(browser: Browser, title: str, rows: list[str], out: Path, shot: bytes = b"") -> None:
    """A window: a title bar, ROWS (HTML lines), then the screenshot SHOT if any."""
    when = now_utc().strftime("%Y-%m-%d %H:%M:%S")
    meta = f"{when} UTC · {socket.gethostname()} · Chromium {browser.version}"
    img = f'<img src="data:image/png;base64,{base64.b64encode(shot).decode()}">' if shot else ""
    page = browser.new_page(viewport={"width": 1800, "height": 400})
    page.set_content(
        f'<!doctype html><meta charset="utf-8"><style>{CSS}</style><div id="win"><div class="bar">'
        f"<b>{html.escape(out.stem)} — {html.escape(title)}</b><span>{html.escape(meta)}</span>"
        f"</div><pre>{''.join(rows)}</pre>{img}</div>"
    )
    page.locator("#win").screenshot(path=out)
    page.close()
    print(f"    wrote {out}")


def row(text: str, cls: str = "") -> str:
    return f'<div class="{cls}">{html.escape(text) or " "}</div>'


# --- text -------------------------------------------------------------------------------------
def clean_lines(raw: bytes) -> list[str]:
    """What a terminal shows: no escapes, the last rewrite of a \\r line, tabs expanded."""
    text = ANSI_RE.sub("", raw.decode("utf-8", errors="replace").replace("\r\n", "\n"))
    lines = []
    for line in text.split("\n"):
        shown = ([part for part in line.split("\r") if part] or [""])[-1]
        lines.append(relative(CONTROL_RE.sub("", shown.expandtabs(8)).rstrip()))
    return "\n".join(lines).strip("\n").split("\n") if any(lines) else []


def line_class(line: str) -> str:
    patterns = (("ok", r"\s*(PASS|ok)\b"), ("bad", r"\s*(FAIL|ERROR|error|Error|fatal)\b"))
    for cls, pattern in (*patterns, ("step", r"==> "), ("echo", r"\+ ")):
        if re.match(pattern, line):
            return cls
    return ""


def cmd_text(args: argparse.Namespace) -> int:
    out, when = Path(args.out), now_utc()
    blocks = [
        (relative(cmd), clean_lines(Path(f).read_bytes()), int(rc)) for cmd, f, rc in args.block
    ]
    rows, txt = [], header(out.stem, args.title, when, socket.gethostname(), 0)
    for n, (cmd, lines, rc) in enumerate(blocks):
        rows += ['<div class="gap"></div>'] * bool(n) + [row(cmd, "cmd")]
        txt += [""] * bool(n) + [f"$ {cmd}", *lines] + [f"[exit status {rc}]"] * bool(rc)
        shown = lines
        if len(lines) > args.max_lines:
            head, tail = min(12, args.max_lines // 4), args.max_lines - min(12, args.max_lines // 4)
            omitted = len(lines) - head - tail
            gap = f"··· {omitted} lines omitted here; all of them in {out.stem}.txt ···"
            shown = [*lines[:head], gap, *lines[-tail:]]
        rows += [
            row(line, "dim" if line.startswith("··· ") else line_class(line)) for line in shown
        ]
        rows += [row(f"[exit status {rc}]", "bad")] * bool(rc)
    worst = next((rc for _, _, rc in blocks if rc), 0)
    txt[1] = header(out.stem, args.title, when, socket.gethostname(), worst)[1]
    Path(args.txt).write_text("\n".join(txt) + "\n", encoding="utf-8")
    with chromium() as browser:
        render(browser, args.title, rows, out)
    return 0


# --- url --------------------------------------------------------------------------------------
def status_line(request: Request) -> tuple[int, str]:
    response = request.response()
    if response is None:
        return 0, request.failure or "no response"
    phrase = response.status_text or HTTPStatus(response.status).phrase
    location = response.headers.get("location")
    where = f"  ·  Location: {location}" if location and 300 <= response.status < 400 else ""
    return response.status, f"{response.status} {phrase}{where}"


def cmd_url(args: argparse.Namespace) -> int:
    out, when, found = Path(args.out), now_utc(), []
    with chromium() as browser:
        context = browser.new_context(
            ignore_https_errors=args.insecure,
            viewport={"width": 1100, "height": 300},
            extra_http_headers=key_header(args.key_file),
        )
        page = context.new_page()
        try:
            response = page.goto(args.url)
        except Error as exc:
            response, found = (
                None,
                [f"Chromium could not load the page: {str(exc).splitlines()[0]}"],
            )
        chain: list[Request] = []
        request = response.request if response else None
        while request is not None:
            chain.insert(0, request)
            request = request.redirected_from
        hops = [(r.url, *status_line(r)) for r in chain]
        text = page.inner_text("body") if response else ""
        shot = page.screenshot(full_page=True) if response else b""
        final, code = (hops[-1][0], hops[-1][1]) if hops else (args.url, 0)
        if args.expect_status and code != args.expect_status:
            found.append(f"the page answered {code}, expected {args.expect_status}")
        if args.expect_scheme and not final.startswith(args.expect_scheme + ":"):
            found.append(f"the browser landed on {final}, expected a {args.expect_scheme}: URL")
        if args.expect_redirect and not any(300 <= hop[1] < 400 for hop in hops):
            found.append("no redirect in the chain")
        if args.expect_text and args.expect_text not in text:
            found.append(f"the page does not show {args.expect_text!r}")
        log = [f"GET {url}  →  {line}" for url, _, line in hops]
        if args.insecure and final.startswith("https:"):
            log.append(
                "TLS certificate not verified (ignore_https_errors): the ingress's is self-signed"
            )
        rows = [row(f"landed on {final}", "cmd"), *(row(line) for line in log)]
        rows += [row(f"UNEXPECTED: {p}", "bad") for p in found]
        render(browser, args.title, rows, out, shot)
    txt = header(out.stem, args.title, when, socket.gethostname(), 1 if found else 0)
    txt += [*log, "# the page shows:", text, *(f"UNEXPECTED: {p}" for p in found)]
    Path(args.txt).write_text("\n".join(txt) + "\n", encoding="utf-8")
    return 1 if found else 0


def read_key(path: Path | None) -> str:
    return "" if path is None else path.read_text(encoding="utf-8").strip()


def key_header(path: Path | None) -> dict[str, str]:
    """The Authorization header of the API key in PATH (a file, so the key is on no command
    line and in no picture); none without one."""
    return {} if path is None else {"Authorization": f"Bearer {read_key(path)}"}


# --- docs -------------------------------------------------------------------------------------
KEY_SHOWN_AS = "<the API key, not shown>"


def hide_key(page: Page, key: str) -> None:
    """Swagger UI shows the request it sent as a curl command, its Authorization header
    included: the key is replaced in the page's text before any screenshot, and a page that
    still holds it anywhere is never pictured."""
    if not key:
        return
    page.evaluate(
        """([key, shown]) => {
            const texts = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
            for (let node = texts.nextNode(); node; node = texts.nextNode()) {
                node.nodeValue = node.nodeValue.replaceAll(key, shown);
            }
            for (const field of document.querySelectorAll("input, textarea")) {
                field.value = field.value.replaceAll(key, shown);
            }
        }""",
        [key, KEY_SHOWN_AS],
    )
    if key in page.content() or key in page.inner_text("body"):
        raise Error("the page still shows the API key: no picture taken")


def cmd_docs(args: argparse.Namespace) -> int:
    out, when, base = Path(args.out), now_utc(), args.url.rstrip("/")
    with chromium() as browser:
        context = browser.new_context(
            ignore_https_errors=args.insecure, viewport={"width": 1100, "height": 900}
        )
        key = read_key(args.key_file)
        seen = search_from_docs(context.new_page(), base, args.query, key)
        hide_key(seen.page, key)
        found = problems(seen, base, "")
        live = seen.block.locator(".live-responses-table").bounding_box()
        bottom = live["y"] + live["height"] + 4 if live else 900
        shot = seen.page.screenshot(
            full_page=True, clip={"x": 0, "y": 0, "width": 1100, "height": bottom}
        )
        url = seen.block.locator(".request-url pre").inner_text()
        own = len(seen.requests) - len(seen.foreign(base))
        log = [
            f"GET {base}/docs, Try it out, q={args.query}, Execute on GET /users/search",
            f"the page sent GET {url}  →  {seen.status} shown",
            f"{len(seen.requests)} requests by the page, {own} of them to {base} (its origin)",
        ]
        if args.insecure:
            log.append(
                "TLS certificate not verified (ignore_https_errors): the ingress's is self-signed"
            )
        rows = [
            *(row(line, "cmd" if n == 0 else "") for n, line in enumerate(log)),
            *(row(f"UNEXPECTED: {p}", "bad") for p in found),
        ]
        render(browser, args.title, rows, out, shot)
    txt = header(out.stem, args.title, when, socket.gethostname(), 1 if found else 0)
    txt += [
        *log,
        "# requests of the page:",
        *seen.requests,
        "# the response body shown:",
        json.dumps(seen.body, indent=2),
    ]
    Path(args.txt).write_text(
        "\n".join([*txt, *(f"UNEXPECTED: {p}" for p in found)]) + "\n", encoding="utf-8"
    )
    return 1 if found else 0


def cmd_browser_version(_args: argparse.Namespace) -> int:
    with chromium() as browser:
        print(f"Chromium {browser.version}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n", maxsplit=1)[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("text", help="a terminal transcript as a PNG")
    t.add_argument("--block", nargs=3, action="append", default=[], metavar=("CMD", "FILE", "RC"))
    t.add_argument(
        "--max-lines", type=int, default=int(os.environ.get("EVIDENCE_MAX_LINES", "100"))
    )
    t.set_defaults(func=cmd_text)
    u = sub.add_parser("url", help="a screenshot of URL with its redirect chain")
    u.add_argument("--expect-status", type=int, default=0)
    u.add_argument("--expect-scheme", default="")
    u.add_argument("--expect-redirect", action="store_true")
    u.add_argument("--expect-text", default="")
    u.set_defaults(func=cmd_url)
    d = sub.add_parser("docs", help="BASE/docs with a search run from the page")
    d.add_argument("--query", required=True)
    d.set_defaults(func=cmd_docs)
    for s in (t, u, d):
        s.add_argument("--out", required=True, help="the PNG to write")
        s.add_argument("--txt", required=True, help="the plain text to write beside it")
        s.add_argument("--title", required=True)
    for s in (u, d):
        s.add_argument("--url", required=True)
        s.add_argument("--insecure", action="store_true", help="accept a self-signed certificate")
        s.add_argument("--key-file", type=Path, help="a file holding the API key to send")
    for name in ("check", "browser-version"):
        sub.add_parser(name).set_defaults(func=cmd_browser_version)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except Error as exc:
        print(
            f"evidence_render: Chromium ({CHROMIUM}): {str(exc).splitlines()[0]}", file=sys.stderr
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
