#!/usr/bin/env python3
"""Render evidence pictures with headless Chromium (stack/evidence.sh calls this).

  evidence_render.py text --out X.png --txt X.txt --title T [--block CMD FILE RC]...
      A terminal transcript -> PNG: each block is a command (shown as "$ CMD" at the top)
      and the file holding what it printed. ANSI escapes are stripped, carriage-return
      progress lines keep what a terminal would show last, long lines wrap (marked with
      "↪", never cut), and a block longer than --max-lines keeps its head and tail with
      a visible "... N lines omitted ..." row. The page is measured in Chromium first and
      the window sized to it, so nothing is cut off. X.txt gets the full, untrimmed text.

  evidence_render.py url --out X.png --txt X.txt --title T --url URL [--insecure]
      A real headless Chromium screenshot of URL. Chromium's own net log gives the chain
      of requests it made (redirects, status lines); the PNG is that screenshot, unscaled,
      below a caption with that chain, and X.txt holds the chain and the page text.
      --expect-status, --expect-scheme, --expect-redirect and --expect-text make it exit 1
      (after writing both files) when the page is not what was expected.

  evidence_render.py check              is there a Chromium and a monospace font?
  evidence_render.py browser-version    the Chromium version the pictures are taken with

Only the standard library and a Chromium from the system's packages (Debian: chromium,
fonts-dejavu-core) are used. CHROMIUM names the browser binary if it is not on PATH.
"""

# Every subprocess here runs Chromium (or fc-match) with arguments built by this script.
# ruff: noqa: S603

from __future__ import annotations

import argparse
import datetime as dt
import html
import json
import math
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

# Flags for a headless Chromium on a machine without a desktop session or open internet:
# the background-networking ones stop it from phoning home (those connections fail and
# slow it down on a closed network); a fresh profile (--user-data-dir) keeps runs alike.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--mute-audio",
]
CHROMIUM_TIMEOUT = int(os.environ.get("CHROMIUM_TIMEOUT", "90"))
SCALE = os.environ.get("RENDER_SCALE", "1")

ANSI_RE = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI: colours, cursor moves, erase line
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)"  # OSC: window titles, hyperlinks
    r"|\x1b[@-Z\\-_]"  # other two-byte escapes
)
CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


class RenderError(Exception):
    pass


# --- chromium ---------------------------------------------------------------------------------
def chromium_binary() -> str:
    named = os.environ.get("CHROMIUM")
    candidates = [named] if named else ["chromium", "chromium-browser", "google-chrome", "chrome"]
    for name in candidates:
        path = shutil.which(name)
        if path:
            return path
    raise RenderError(
        f"no Chromium found (looked for {', '.join(candidates)}): install it from the system's "
        "packages, e.g. 'apt-get install -y chromium fonts-dejavu-core', or set CHROMIUM"
    )


def command_output(args: list[str]) -> str:
    """What a short command printed, or "" if it could not run."""
    try:
        return subprocess.run(
            args, capture_output=True, text=True, timeout=30, check=False
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def chromium_version() -> str:
    try:
        out = command_output([chromium_binary(), "--version"])
    except RenderError:
        return "Chromium (version unknown)"
    line = out.splitlines()[-1] if out else ""
    m = re.match(r"(\S*(?:Chromium|Chrome)\S*\s+[\d.]+)", line)  # drop "built on ..."
    if m:
        return m.group(1)
    return line or "Chromium (version unknown)"


def run_chromium(args: list[str], work: Path) -> subprocess.CompletedProcess[str]:
    profile = tempfile.mkdtemp(prefix="profile-", dir=work)
    cmd = [
        chromium_binary(),
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        f"--force-device-scale-factor={SCALE}",
        *args,
    ]
    try:
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise RenderError(
            f"chromium did not finish within {CHROMIUM_TIMEOUT} s: {' '.join(cmd)}"
        ) from exc


def screenshot(target: str, out: Path, size: tuple[int, int], work: Path) -> None:
    out.unlink(missing_ok=True)
    proc = run_chromium([f"--window-size={size[0]},{size[1]}", f"--screenshot={out}", target], work)
    if not out.exists() or out.stat().st_size == 0:
        raise RenderError(
            f"chromium wrote no screenshot of {target} (exit {proc.returncode}):\n"
            + proc.stderr[-2000:]
        )


def dump_dom(target: str, work: Path, size: tuple[int, int], extra: list[str]) -> str:
    proc = run_chromium([*extra, f"--window-size={size[0]},{size[1]}", "--dump-dom", target], work)
    if proc.returncode != 0 and not proc.stdout:
        raise RenderError(
            f"chromium --dump-dom {target} failed (exit {proc.returncode}):\n" + proc.stderr[-2000:]
        )
    return proc.stdout


def png_size(path: Path) -> tuple[int, int]:
    with path.open("rb") as f:
        head = f.read(24)
    if head[:8] != b"\x89PNG\r\n\x1a\n":
        raise RenderError(f"{path} is not a PNG")
    width, height = struct.unpack(">II", head[16:24])
    return int(width), int(height)


# The page measures its own window element once loaded; --dump-dom then shows the size.
MEASURE_JS = """
<script>
window.addEventListener('load', function () {
  var r = document.getElementById('win').getBoundingClientRect();
  document.body.setAttribute('data-size', Math.ceil(r.width) + 'x' + Math.ceil(r.height));
});
</script>
"""


def measured_size(page: Path, work: Path) -> tuple[int, int]:
    dom = dump_dom(page.as_uri(), work, (4000, 2000), [])
    m = re.search(r'data-size="(\d+)x(\d+)"', dom)
    if not m:
        raise RenderError(f"could not measure {page} in chromium")
    return int(m.group(1)), int(m.group(2))


def render_page(page_html: str, out: Path, work: Path) -> None:
    """Write the page, measure it in Chromium, screenshot it at exactly that size."""
    page = work / "page.html"
    page.write_text(page_html, encoding="utf-8")
    size = measured_size(page, work)
    screenshot(page.as_uri(), out, size, work)


# --- text cleaning ----------------------------------------------------------------------------
def apply_backspaces(line: str) -> str:
    kept: list[str] = []
    for ch in line:
        if ch != "\b":
            kept.append(ch)
        elif kept:
            kept.pop()
    return "".join(kept)


def clean_line(raw: str) -> str:
    """What a terminal would show: the last rewrite of a \\r line, tabs expanded, no controls."""
    shown = raw
    if "\r" in shown:
        parts = [p for p in shown.split("\r") if p]
        shown = parts[-1] if parts else ""
    if "\b" in shown:
        shown = apply_backspaces(shown)
    return CONTROL_RE.sub("", shown.expandtabs(8)).rstrip()


def clean_lines(raw: bytes) -> list[str]:
    text = ANSI_RE.sub("", raw.decode("utf-8", errors="replace").replace("\r\n", "\n"))
    lines = [clean_line(line) for line in text.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    while lines and not lines[0]:
        lines.pop(0)
    return lines


def line_class(line: str) -> str:
    s = line.lstrip()
    if re.match(r"(PASS|ok)\b", s):
        return "ok"
    if re.match(r"(FAIL|ERROR|error|Error|fatal)\b", s):
        return "bad"
    if s.startswith("==> "):
        return "step"
    if line.startswith("+ "):
        return "echo"
    return ""


# --- text -> png ------------------------------------------------------------------------------
TEXT_CSS = """
html, body { margin: 0; padding: 0; background: #0d1117; }
.win { display: inline-block; width: max-content; min-width: MIN_WIDTHpx; background: #0d1117; }
.bar { display: flex; align-items: center; height: 34px; padding: 0 14px; background: #161b22;
       border-bottom: 1px solid #30363d; font: 13px "DejaVu Sans", sans-serif; color: #8b949e;
       white-space: nowrap; }
.dot { display: inline-block; width: 12px; height: 12px; border-radius: 6px; margin-right: 7px; }
.title { color: #e6edf3; font-weight: bold; margin-left: 8px; margin-right: 32px; }
.meta { margin-left: auto; }
.term { padding: 12px 18px 16px 18px; font: 14px/19px "DejaVu Sans Mono", monospace;
        color: #e6edf3; }
.r { height: 19px; white-space: pre; }
.prompt { color: #7ee787; font-weight: bold; }
.cmd { color: #ffffff; font-weight: bold; }
.gap { height: 10px; }
.ok { color: #3fb950; }
.bad { color: #f85149; }
.step { color: #d2a8ff; font-weight: bold; }
.echo { color: #79c0ff; }
.dim { color: #8b949e; font-style: italic; }
.cont { color: #6e7681; }
.status { color: #f85149; font-weight: bold; }
"""


@dataclass
class Block:
    cmd: str
    lines: list[str]
    rc: int


def wrap(line: str, cols: int) -> list[str]:
    """Rows of at most cols characters (continuation rows: cols - 2, after their "↪ ").

    A row ends after the last space of its last quarter if there is one, else at cols.
    """
    rows: list[str] = []
    rest = line
    width = cols
    while len(rest) > width:
        cut = rest.rfind(" ", width * 3 // 4, width)
        cut = cut + 1 if cut > 0 else width
        rows.append(rest[:cut])
        rest = rest[cut:]
        width = cols - 2
    rows.append(rest)
    return rows


def rows_html(text: str, cls: str, cols: int, *, prompt: bool = False) -> list[str]:
    if not text:
        return ['<div class="r"> </div>']
    prefix = '<span class="prompt">$ </span>' if prompt else ""
    out = []
    for i, chunk in enumerate(wrap(text, cols - (2 if prompt else 0))):
        body = html.escape(chunk)
        if cls:
            body = f'<span class="{cls}">{body}</span>'
        lead = prefix if i == 0 else '<span class="cont">↪ </span>'
        out.append(f'<div class="r">{lead}{body}</div>')
    return out


def shown_lines(block: Block, name: str, max_lines: int) -> list[tuple[str, str]]:
    """(line, css class) to show: all of them, or the head and tail around a marked gap."""
    shown = [(line, line_class(line)) for line in block.lines]
    if len(shown) <= max_lines:
        return shown
    head = min(12, max_lines // 4)
    tail = max_lines - head
    omitted = len(shown) - head - tail
    marker = f"··· {omitted} lines omitted here; the full output is in {name}.txt ···"
    return [*shown[:head], (marker, "dim"), *shown[-tail:]]


def text_page(
    title: str, meta: str, blocks: list[Block], *, name: str, max_lines: int, cols: int
) -> str:
    rows: list[str] = []
    for n, block in enumerate(blocks):
        if n:
            rows.append('<div class="gap"></div>')
        if block.cmd:
            rows += rows_html(block.cmd, "cmd", cols, prompt=True)
        for line, cls in shown_lines(block, name, max_lines):
            rows += rows_html(line, cls, cols)
        if block.rc:
            rows.append(
                f'<div class="r"><span class="status">[exit status {block.rc}]</span></div>'
            )
    css = TEXT_CSS.replace("MIN_WIDTH", str(max(760, int(7.6 * (len(title) + len(meta))) + 160)))
    dots = "".join(
        f'<span class="dot" style="background:{c}"></span>'
        for c in ("#ff5f56", "#ffbd2e", "#27c93f")
    )
    body = "\n".join(rows)
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f'<style>{css}</style></head><body><div class="win" id="win"><div class="bar">{dots}'
        f'<span class="title">{html.escape(title)}</span><span class="meta">{html.escape(meta)}'
        f'</span></div><div class="term">{body}</div></div>{MEASURE_JS}</body></html>'
    )


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def header_lines(name: str, title: str, when: dt.datetime, host: str, rc: int) -> list[str]:
    return [
        f"# {name}: {title}",
        (
            f"# captured {when.isoformat().replace('+00:00', 'Z')} on host {host} "
            f"by stack/evidence.sh (exit status {rc})"
        ),
        "",
    ]


def cmd_text(args: argparse.Namespace) -> int:
    out = Path(args.out)
    name = out.stem
    when = now_utc()
    host = args.host or socket.gethostname()
    blocks = [
        Block(cmd, clean_lines(Path(path).read_bytes()), int(rc))
        for cmd, path, rc in args.block or []
    ]
    worst = next((b.rc for b in blocks if b.rc), 0)
    meta = f"{when.strftime('%Y-%m-%d %H:%M:%S')} UTC · {host}"

    if args.txt:
        txt = header_lines(name, args.title, when, host, worst)
        for n, block in enumerate(blocks):
            txt += [""] if n else []
            txt += [f"$ {block.cmd}", *block.lines]
            txt += [f"[exit status {block.rc}]"] if block.rc else []
        Path(args.txt).write_text("\n".join(txt) + "\n", encoding="utf-8")

    page = text_page(
        f"{name} — {args.title}",
        meta,
        blocks,
        name=name,
        max_lines=args.max_lines,
        cols=args.max_cols,
    )
    with tempfile.TemporaryDirectory(prefix="evidence-render-") as tmp:
        render_page(page, out, Path(tmp))
    w, h = png_size(out)
    print(f"    wrote {out} ({w}x{h})" + (f" and {args.txt}" if args.txt else ""))
    return 0


# --- url -> png -------------------------------------------------------------------------------
class PageText(HTMLParser):
    """The visible text of a page (of a JSON or text document: the <pre> Chromium shows)."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.pre: list[str] = []
        self.skip = 0
        self.in_pre = 0

    def handle_starttag(self, tag: str, _attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style", "head"):
            self.skip += 1
        if tag == "pre":
            self.in_pre += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "head") and self.skip:
            self.skip -= 1
        if tag == "pre" and self.in_pre:
            self.in_pre -= 1

    def handle_data(self, data: str) -> None:
        if not self.skip:
            (self.pre if self.in_pre else self.parts).append(data)

    def text(self) -> str:
        if self.pre:
            return "".join(self.pre).strip("\n")
        return re.sub(r"\n\s*\n+", "\n", "".join(self.parts)).strip()


def page_text(dom: str) -> str:
    parser = PageText()
    parser.feed(dom)
    return parser.text()


@dataclass
class Hop:
    """One request the browser made for the top-level page."""

    url: str
    status: str = ""  # the response's status line, e.g. "HTTP/1.1 301 Moved Permanently"
    location: str = ""
    error: str = ""  # e.g. net::ERR_CONNECTION_REFUSED
    h2: bool = False

    @property
    def code(self) -> int:
        m = re.match(r"HTTP/\S+\s+(\d{3})", self.status)
        return int(m.group(1)) if m else 0

    @property
    def outcome(self) -> str:
        return self.status or self.error or "no response"


def load_netlog(netlog: Path) -> dict[str, object]:
    text = netlog.read_text(encoding="utf-8", errors="replace")
    try:
        data = json.loads(text)
    except ValueError:
        # Chromium closes the log with "]}" when it exits; repair one cut short.
        data = json.loads(text.rstrip().rstrip(",") + "]}")
    if not isinstance(data, dict):
        raise RenderError(f"{netlog} is not a Chromium net log")
    return data


def main_frame_chain(netlog: Path) -> list[Hop]:
    """Each request of the top-level page, in order, from Chromium's net log."""
    data = load_netlog(netlog)
    constants = data["constants"]
    assert isinstance(constants, dict)  # noqa: S101 (the net log's format)
    names = {v: k for k, v in constants["logEventTypes"].items()}
    errors = {v: k for k, v in constants.get("netError", {}).items()}
    main_ids: set[int] = set()
    chain: list[Hop] = []
    events = data.get("events", [])
    assert isinstance(events, list)  # noqa: S101
    for ev in events:
        kind = names.get(ev.get("type"), "")
        params = ev.get("params") or {}
        src = ev.get("source", {}).get("id")
        if kind == "URL_REQUEST_START_JOB" and params.get("request_type") == "main frame":
            main_ids.add(src)
            chain.append(Hop(url=params.get("url", "")))
        elif src in main_ids and chain:
            note_event(chain[-1], kind, params, errors)
    return chain


def note_event(hop: Hop, kind: str, params: dict[str, object], errors: dict[int, str]) -> None:
    if kind.startswith("HTTP_TRANSACTION_HTTP2_"):
        hop.h2 = True
    elif kind == "HTTP_TRANSACTION_READ_RESPONSE_HEADERS":
        headers = params.get("headers")
        if isinstance(headers, list) and headers:
            # Chromium logs an HTTP/2 response with a made-up "HTTP/1.1" status line.
            hop.status = re.sub(r"^HTTP/\S+", "HTTP/2", headers[0]) if hop.h2 else headers[0]
            for header in headers[1:]:
                if header.lower().startswith("location:"):
                    hop.location = header.split(":", 1)[1].strip()
    elif kind == "URL_REQUEST_REDIRECTED":
        hop.location = str(params.get("location", hop.location))
    else:
        code = params.get("net_error")
        if isinstance(code, int) and code < 0 and not hop.error:
            hop.error = "net::" + errors.get(code, str(code))


URL_CSS = """
html, body { margin: 0; padding: 0; background: #d0d7de; }
.win { display: inline-block; width: max-content; background: #ffffff; }
.bar { height: 34px; display: flex; align-items: center; padding: 0 14px; background: #f6f8fa;
       border-bottom: 1px solid #d0d7de; font: bold 13px "DejaVu Sans", sans-serif;
       color: #1f2328; white-space: nowrap; }
.meta { margin-left: auto; font-weight: normal; color: #57606a; padding-left: 32px; }
.addr { margin: 8px 14px; padding: 6px 10px; border: 1px solid #d0d7de; border-radius: 16px;
        background: #f6f8fa; font: 14px "DejaVu Sans Mono", monospace; color: #1f2328;
        white-space: nowrap; }
.label { color: #57606a; }
.log { padding: 0 14px 8px 14px; font: 12px/17px "DejaVu Sans Mono", monospace; color: #57606a;
       white-space: pre; }
.log b { color: #1f2328; }
.log .bad { color: #cf222e; }
.shot { display: block; margin: 0 14px 14px 14px; border: 1px solid #8c959f; background: #ffffff; }
.noshot { padding: 40px 0; text-align: center; font: 16px "DejaVu Sans", sans-serif;
          color: #cf222e; }
"""


@dataclass
class Caption:
    title: str
    meta: str
    label: str  # "landed on" or "could not load"
    address: str
    log_html: list[str]


def url_page(caption: Caption, shot: Path | None, shot_size: tuple[int, int]) -> str:
    width, height = shot_size
    if shot is None:
        img = f'<div class="shot noshot" style="width:{width}px">no page to show</div>'
    else:
        img = f'<img class="shot" src="{shot.as_uri()}" width="{width}" height="{height}">'
    log = "\n".join(caption.log_html)
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><style>{URL_CSS}</style></head><body>'
        f'<div class="win" id="win"><div class="bar">{html.escape(caption.title)}'
        f'<span class="meta">{html.escape(caption.meta)}</span></div>'
        f'<div class="addr"><span class="label">{html.escape(caption.label)} </span>'
        f'{html.escape(caption.address)}</div><div class="log">{log}</div>{img}</div>'
        f"{MEASURE_JS}</body></html>"
    )


def estimated_height(text: str, width: int) -> int:
    # Chromium shows JSON and plain text in a <pre> (13 px DejaVu Sans Mono, about 7.9 px a
    # character, 15 px a row) that wraps long lines, under a 20 px "Pretty-print" bar.
    cols = max(20, int((width - 24) / 7.9))
    rows = sum(max(1, math.ceil(len(line) / cols)) for line in (text.splitlines() or [""]))
    return 20 + 16 + rows * 16 + 48


def problems_with(args: argparse.Namespace, chain: list[Hop], text: str) -> list[str]:
    final = chain[-1]
    problems = []
    if args.expect_status and final.code != args.expect_status:
        problems.append(f"the page answered {final.outcome}, expected {args.expect_status}")
    if args.expect_scheme and not final.url.startswith(args.expect_scheme + ":"):
        problems.append(f"the browser landed on {final.url}, expected a {args.expect_scheme}: URL")
    if args.expect_redirect and not any(300 <= hop.code < 400 for hop in chain):
        problems.append("no redirect in the chain")
    if args.expect_text and args.expect_text not in text:
        problems.append(f"the page does not show {args.expect_text!r}")
    return problems


@dataclass
class Visit:
    """What headless Chromium did with one URL."""

    url: str
    text: str  # the page's text, from --dump-dom
    chain: list[Hop]  # the page's requests, from --log-net-log
    shot: Path | None  # the screenshot, None when the page did not load
    shot_size: tuple[int, int]
    load_error: str = ""

    @property
    def final(self) -> Hop:
        return self.chain[-1] if self.chain else Hop(url=self.url, error="no request seen")


def visit(args: argparse.Namespace, work: Path) -> Visit:
    # No automatic https upgrade of http:// URLs: the redirect shown must be the server's.
    extra = ["--disable-features=HttpsUpgrades"]
    if args.insecure:
        extra.append("--ignore-certificate-errors")
    text = page_text(dump_dom(args.url, work, (args.width, 800), extra))
    height = args.height or min(
        args.max_height, max(args.min_height, estimated_height(text, args.width))
    )
    raw = work / "browser.png"
    netlog = work / "netlog.json"
    window = f"--window-size={args.width},{height}"
    proc = run_chromium(
        [*extra, f"--log-net-log={netlog}", window, f"--screenshot={raw}", args.url], work
    )
    chain = main_frame_chain(netlog) if netlog.exists() else []
    if raw.exists() and raw.stat().st_size > 0:
        return Visit(args.url, text, chain, raw, png_size(raw))
    # Chromium takes no screenshot of a page that failed to load (refused, timed out...).
    m = re.search(r"Page load failed: (\S+)", proc.stderr)
    error = m.group(1) if m else f"no screenshot (chromium exit {proc.returncode})"
    return Visit(args.url, text, chain, None, (args.width, 0), error)


def visit_problems(args: argparse.Namespace, seen: Visit) -> list[str]:
    if seen.load_error:  # the one problem: what follows from it would only repeat it
        return [f"Chromium could not load the page: {seen.load_error}"]
    if not seen.chain:
        return ["Chromium's net log shows no request for the page"]
    return problems_with(args, seen.chain, seen.text)


def caption_log(args: argparse.Namespace, seen: Visit, problems: list[str]) -> list[str]:
    log = []
    for hop in seen.chain:
        line = f"<b>GET {html.escape(hop.url)}</b>  →  {html.escape(hop.outcome)}"
        if hop.location and 300 <= hop.code < 400:
            line += f"  ·  Location: {html.escape(hop.location)}"
        log.append(line)
    if args.insecure and seen.final.url.startswith("https:") and seen.shot:
        log.append(
            "TLS certificate not verified (--ignore-certificate-errors): "
            "the ingress uses a self-signed certificate"
        )
    log += [f'<b class="bad">UNEXPECTED: {html.escape(p)}</b>' for p in problems]
    if seen.shot:
        width, height = seen.shot_size
        log.append(
            f"below: the page as headless Chromium rendered it ({width}x{height} window, "
            "screenshot unscaled)"
        )
    return log


def visit_text(
    args: argparse.Namespace, seen: Visit, problems: list[str], header: list[str]
) -> str:
    how = f"no screenshot: {seen.load_error}" if seen.load_error else "window {}x{}"
    txt = [
        *header,
        f"# {chromium_version()}, headless, {how.format(*seen.shot_size)}"
        + (", --ignore-certificate-errors" if args.insecure else ""),
        "# requests of the page, from Chromium's net log:",
    ]
    for hop in seen.chain:
        where = f" (Location: {hop.location})" if hop.location else ""
        txt.append(f"GET {hop.url} -> {hop.outcome}{where}")
    where = "landed on" if seen.shot else "could not load"
    txt += [f"# {where} {seen.final.url}; the page shows:", seen.text]
    txt += [f"UNEXPECTED: {p}" for p in problems]
    return "\n".join(txt) + "\n"


def cmd_url(args: argparse.Namespace) -> int:
    out = Path(args.out)
    when = now_utc()
    host = args.host or socket.gethostname()
    with tempfile.TemporaryDirectory(prefix="evidence-browser-") as tmp:
        work = Path(tmp)
        seen = visit(args, work)
        problems = visit_problems(args, seen)
        stamp = when.strftime("%Y-%m-%d %H:%M:%S")
        caption = Caption(
            title=f"{out.stem} — {args.title}",
            meta=f"{chromium_version()}, headless · {stamp} UTC · {host}",
            label="landed on" if seen.shot else "could not load",
            address=seen.final.url,
            log_html=caption_log(args, seen, problems),
        )
        render_page(url_page(caption, seen.shot, seen.shot_size), out, work)
    if args.txt:
        header = header_lines(out.stem, args.title, when, host, 1 if problems else 0)
        Path(args.txt).write_text(visit_text(args, seen, problems, header), encoding="utf-8")

    for hop in seen.chain:
        print(f"    GET {hop.url} -> {hop.outcome}")
    w, h = png_size(out)
    print(f"    wrote {out} ({w}x{h})" + (f" and {args.txt}" if args.txt else ""))
    for p in problems:
        print(f"    UNEXPECTED: {p}", file=sys.stderr)
    return 1 if problems else 0


# --- check ------------------------------------------------------------------------------------
def cmd_check(_args: argparse.Namespace) -> int:
    path = chromium_binary()
    print(f"    browser: {path} ({chromium_version()})")
    font = command_output(["fc-match", "DejaVu Sans Mono"])  # fontconfig's tool, from PATH
    if "DejaVu" in font:
        print(f"    font: {font}")
    else:
        print(
            "    warning: no DejaVu Sans Mono font (Debian: apt-get install fonts-dejavu-core); "
            f"the text renders in {font or 'an unknown font'}",
            file=sys.stderr,
        )
    return 0


def cmd_browser_version(_args: argparse.Namespace) -> int:
    print(chromium_version())
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n", maxsplit=1)[0])
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("text", help="a terminal transcript as a PNG")
    t.add_argument("--out", required=True, help="the PNG to write")
    t.add_argument("--txt", help="also write the full plain-text transcript here")
    t.add_argument("--title", required=True)
    t.add_argument("--host", help="host name for the title bar (default: this machine's)")
    t.add_argument(
        "--block",
        nargs=3,
        action="append",
        metavar=("CMD", "FILE", "RC"),
        help="a command as shown, the file with its output, its exit status",
    )
    t.add_argument(
        "--max-lines",
        type=int,
        default=int(os.environ.get("EVIDENCE_MAX_LINES", "100")),
        help="longest output shown whole; a longer one keeps head and tail (default 100)",
    )
    t.add_argument(
        "--max-cols",
        type=int,
        default=int(os.environ.get("EVIDENCE_MAX_COLS", "160")),
        help="longer lines wrap onto rows marked with ↪ (default 160)",
    )
    t.set_defaults(func=cmd_text)

    u = sub.add_parser("url", help="a headless Chromium screenshot of a URL")
    u.add_argument("--out", required=True, help="the PNG to write")
    u.add_argument("--txt", help="also write the requests and the page text here")
    u.add_argument("--title", required=True)
    u.add_argument("--url", required=True)
    u.add_argument("--host", help="host name for the title bar (default: this machine's)")
    u.add_argument("--insecure", action="store_true", help="accept a self-signed certificate")
    u.add_argument("--width", type=int, default=int(os.environ.get("BROWSER_WIDTH", "1100")))
    u.add_argument("--height", type=int, default=0, help="window height (default: fits the text)")
    u.add_argument("--min-height", type=int, default=240)
    u.add_argument("--max-height", type=int, default=2400)
    u.add_argument("--expect-status", type=int, default=0, help="the final response's status")
    u.add_argument("--expect-scheme", default="", help="the final URL's scheme, e.g. https")
    u.add_argument("--expect-redirect", action="store_true", help="a 3xx on the way")
    u.add_argument("--expect-text", default="", help="text the page must show")
    u.set_defaults(func=cmd_url)

    c = sub.add_parser("check", help="is there a Chromium and a monospace font to render with?")
    c.set_defaults(func=cmd_check)
    v = sub.add_parser("browser-version", help="the Chromium version the pictures are taken with")
    v.set_defaults(func=cmd_browser_version)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except RenderError as exc:
        print(f"evidence_render: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
