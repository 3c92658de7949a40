#!/usr/bin/env python3
"""Open the API's interactive documentation in the system's Chromium, authorize with an API
key and run a search from the page's own controls, and check that every request the page
made stayed on its origin.

  browser_check.py --key-file FILE [--insecure] [--query TEXT] [--expect-id ID] BASE_URL

Prints one line (what the page showed, how many requests went where) and exits 0 when the
search answered 200 on the page, found ID if given, and no request left BASE_URL's origin;
1 otherwise, 2 when the browser cannot be started. stack/verify.sh runs it against the
ingress (--insecure: its certificate is self-signed) and tools/evidence_render.py uses it to
take the /docs picture. CHROMIUM names the browser binary (default /usr/bin/chromium).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from playwright.sync_api import Browser, Error, Locator, Page, sync_playwright

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# Running as root needs --no-sandbox; the others keep Chromium from calling home.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 30_000


@contextmanager
def chromium() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class DocsSearch:
    """What the /docs page showed for a search run from its controls."""

    page: Page
    block: Locator  # the search operation, opened, with its response
    status: int = 0
    body: Any = None
    requests: list[str] = field(default_factory=list)

    def foreign(self, base_url: str) -> list[str]:
        return [url for url in self.requests if origin_of(url) != origin_of(base_url)]


DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_of(url: str) -> tuple[str, str, int | None]:
    """Scheme, host and port, the default port written out: https://h and https://h:443 are
    one origin, as browsers see it."""
    parts = urlsplit(url)
    return parts.scheme, parts.hostname or "", parts.port or DEFAULT_PORTS.get(parts.scheme)


def authorize(page: Page, key: str) -> None:
    """Give KEY to the page as a person does: "Authorize", the key in the bearer scheme's
    field, "Authorize", "Close". Every request "Try it out" sends then carries it."""
    page.locator("button.authorize").first.click()
    page.locator("#auth-bearer-value").fill(key)
    page.get_by_role("button", name="Apply credentials").click()
    page.locator(".modal-ux .btn-done").click()


def search_from_docs(page: Page, base_url: str, query: str, key: str) -> DocsSearch:
    """On BASE_URL/docs: "Authorize" with KEY, open GET /users/search, "Try it out", type
    QUERY, "Execute"."""
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(f"{base_url}/docs")
    authorize(page, key)
    block = page.locator("#operations-default-get_users_search")
    block.locator(".opblock-summary").click()
    block.get_by_role("button", name="Try it out").click()
    block.locator('tr[data-param-name="q"] input').fill(query)
    with page.expect_response(lambda r: "/users/search" in r.url) as answer:
        block.get_by_role("button", name="Execute").click()
    status = block.locator(".live-responses-table tr.response .response-col_status")
    status.filter(has_text=str(answer.value.status)).wait_for()
    text = block.locator(".live-responses-table tr.response .highlight-code code").inner_text()
    try:
        body = json.loads(text)
    except ValueError:
        body = text
    return DocsSearch(page, block, int(status.inner_text()), body, requests)


def problems(seen: DocsSearch, base_url: str, expect_id: str) -> list[str]:
    found = []
    if seen.status != 200:
        found.append(f"the page shows {seen.status}, expected 200")
    if expect_id:
        items = seen.body.get("items", []) if isinstance(seen.body, dict) else []
        if expect_id not in [item.get("id") for item in items]:
            found.append(f"the page's result does not list user {expect_id}")
    foreign = seen.foreign(base_url)
    if foreign:
        found.append(f"requests to other hosts: {', '.join(sorted(set(foreign)))}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n", maxsplit=1)[0])
    parser.add_argument("base_url", help="where the API answers, e.g. https://localhost:443")
    parser.add_argument("--query", default="example", help="what to search for")
    parser.add_argument("--expect-id", default="", help="a user id the search must find")
    parser.add_argument("--insecure", action="store_true", help="accept a self-signed cert")
    parser.add_argument(
        "--key-file", type=Path, required=True, help="a file holding an API key that may read"
    )
    args = parser.parse_args(argv)
    base_url = args.base_url.rstrip("/")
    try:
        key = args.key_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        parser.error(f"--key-file: {exc.strerror}: {args.key_file}")
    try:
        with chromium() as browser:
            context = browser.new_context(ignore_https_errors=args.insecure)
            seen = search_from_docs(context.new_page(), base_url, args.query, key)
            context.close()
    except Error as exc:
        print(f"{base_url}/docs: {str(exc).splitlines()[0]}")
        return 2
    found = problems(seen, base_url, args.expect_id)
    origin = urlsplit(base_url).netloc
    items = seen.body.get("total", "?") if isinstance(seen.body, dict) else "?"
    print(
        f"Chromium on {base_url}/docs: search q={args.query} from the page -> {seen.status} "
        f"({items} found); {len(seen.requests)} requests, "
        f"{len(seen.requests) - len(seen.foreign(base_url))} to {origin}"
        + "".join(f"; {p}" for p in found)
    )
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
