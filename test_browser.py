"""The interactive documentation (/docs) in a real browser: the system's Chromium, driven by
Playwright, uses the API through Swagger UI's own controls, against the app served by
gunicorn with the in-memory store.

CHROMIUM names the browser binary (default /usr/bin/chromium; Debian: apt-get install
chromium). Playwright never downloads a browser of its own here.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.error import URLError
from urllib.parse import urlsplit

import pytest
from browser_check import CHROMIUM, CHROMIUM_ARGS, authorize, origin_of
from playwright.sync_api import Browser, ConsoleMessage, Locator, Page, Request, sync_playwright

import usersapi_keys

Json = Any
# The keys the page is given: one that may write, one that may only read.
WRITE_KEY, READ_KEY = "usersapi_browser-test-write-key", "usersapi_browser-test-read-key"
KEYS = "\n".join(
    usersapi_keys.key_line(name, name, key)
    for name, key in (("write", WRITE_KEY), ("read", READ_KEY))
)
# Every Content-Security-Policy violation of the page, as the browser reports it.
RECORD_CSP_VIOLATIONS = """
window.cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.cspViolations.push(event.violatedDirective + " " + event.blockedURI);
});
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_up(url: str, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"gunicorn exited with status {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):  # noqa: S310 (a local http URL)
                return
        except (URLError, OSError):
            time.sleep(0.2)
    pytest.fail(f"{url} did not answer within {timeout} s")


@pytest.fixture(scope="session")
def base_url() -> Iterator[str]:
    """The API under gunicorn, one worker (the in-memory store lives in its process)."""
    port = free_port()
    env = {**os.environ, "MONGO_URI": "mongomock://", "LOG_LEVEL": "WARNING", "API_KEYS": KEYS}
    env.pop("GUNICORN_CMD_ARGS", None)
    command = [sys.executable, "-m", "gunicorn", "--workers=1", f"--bind=127.0.0.1:{port}"]
    process = subprocess.Popen(  # noqa: S603 (fixed arguments)
        [*command, "usersapi:create_app()"], env=env, cwd=Path(__file__).parent
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{url}/health", process)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"no Chromium at {CHROMIUM}: apt-get install -y chromium, or set CHROMIUM")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@dataclass
class Docs:
    """The /docs page, with what it asked for and what the browser complained about."""

    page: Page
    requests: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)

    def csp_violations(self) -> list[str]:
        violations: list[str] = self.page.evaluate("window.cspViolations")
        return violations

    def hosts(self) -> set[str]:
        return {urlsplit(url).netloc for url in self.requests}

    def operation(self, operation_id: str) -> Operation:
        """One operation, expanded, with "Try it out" pressed."""
        block = self.page.locator(f"#operations-default-{operation_id}")
        block.locator(".opblock-summary").click()
        block.get_by_role("button", name="Try it out").click()
        return Operation(self.page, block)


@dataclass
class Operation:
    page: Page
    block: Locator

    def fill(self, parameter: str, value: str) -> None:
        self.block.locator(f'tr[data-param-name="{parameter}"] input').fill(value)

    def body(self, payload: Json) -> None:
        self.block.locator("textarea.body-param__text").fill(json.dumps(payload))

    def execute(self) -> tuple[int, Json]:
        """Press Execute; the status code and the body the page shows for the response."""
        with self.page.expect_response(lambda r: "/users" in r.url) as answer:
            self.block.get_by_role("button", name="Execute").click()
        status = str(answer.value.status)
        shown = self.block.locator(".live-responses-table tr.response .response-col_status")
        shown.filter(has_text=status).wait_for()
        body = self.block.locator(
            ".live-responses-table tr.response .highlight-code code"
        ).inner_text()
        return int(shown.inner_text()), json.loads(body)


@pytest.fixture
def unauthorized_docs(browser: Browser, base_url: str) -> Iterator[Docs]:
    """/docs loaded in a new browser context, before anyone pressed Authorize."""
    context = browser.new_context(base_url=base_url)
    page = context.new_page()
    page.add_init_script(RECORD_CSP_VIOLATIONS)
    seen = Docs(page)

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            seen.console_errors.append(message.text)

    def on_request(request: Request) -> None:
        seen.requests.append(request.url)

    page.on("console", on_console)
    page.on("request", on_request)
    page.goto("/docs")
    page.locator(".opblock").first.wait_for()
    yield seen
    context.close()


@pytest.fixture
def docs(unauthorized_docs: Docs) -> Docs:
    """/docs, authorized with the write key."""
    authorize(unauthorized_docs.page, WRITE_KEY)
    return unauthorized_docs


def new_user(**fields: str) -> dict[str, str]:
    tag = uuid.uuid4().hex[:10]
    return {"name": f"Browser {tag}", "email": f"{tag}@example.com", "username": tag, **fields}


def test_the_root_opens_the_docs_with_every_operation(browser: Browser, base_url: str) -> None:
    page = browser.new_page()
    response = page.goto(f"{base_url}/")
    assert response is not None
    assert response.request.redirected_from is not None
    assert response.request.redirected_from.url == f"{base_url}/"
    assert page.url == f"{base_url}/docs"
    page.locator(".opblock").first.wait_for()
    summaries = page.locator(".opblock-summary-path").all_inner_texts()
    assert {"/users", "/users/search", "/users/{user_id}"} <= {s.strip() for s in summaries}
    assert page.locator(".opblock").count() == 10
    page.close()


def test_the_page_loads_everything_from_the_api_without_csp_violations(
    docs: Docs, base_url: str
) -> None:
    assert docs.hosts() == {urlsplit(base_url).netloc}
    assert f"{base_url}/openapi.json" in docs.requests
    assert f"{base_url}/docs/swagger-ui-bundle.js" in docs.requests
    # Every operation and every schema opened: all of the page is drawn under the policy.
    for summary in docs.page.locator(".opblock-summary").all():
        summary.click()
    for model in docs.page.locator(".models .model-box-control").all():
        model.click()
    assert docs.page.locator(".opblock.is-open").count() == 10
    assert docs.csp_violations() == []
    assert docs.console_errors == []


def test_the_policy_is_enforced(docs: Docs) -> None:
    # A control for the test above: an inline script is refused and reported.
    docs.page.evaluate(
        "() => { const s = document.createElement('script');"
        " s.textContent = 'window.inlineRan = true'; document.body.append(s); }"
    )
    assert docs.page.evaluate("window.inlineRan === undefined")
    assert any(v.startswith("script-src") for v in docs.csp_violations())


def test_create_search_and_edit_a_user_from_the_page(docs: Docs, base_url: str) -> None:
    user = new_user()
    create = docs.operation("post_users")
    create.body(user)
    status, created = create.execute()
    assert status == 201
    assert {k: created[k] for k in user} == user

    search = docs.operation("get_users_search")
    search.fill("q", user["username"].upper())
    status, found = search.execute()
    assert status == 200
    assert found["total"] == 1
    assert [item["id"] for item in found["items"]] == [created["id"]]

    edit = docs.operation("patch_users__user_id_")
    edit.fill("user_id", created["id"])
    edit.body({"name": "Edited In The Browser"})
    status, edited = edit.execute()
    assert status == 200
    assert edited == {
        **created,
        "name": "Edited In The Browser",
        "version": created["version"] + 1,
        "updated_at": edited["updated_at"],
    }
    assert edited["updated_at"] >= created["updated_at"]
    assert docs.hosts() == {urlsplit(base_url).netloc}
    assert docs.csp_violations() == []


def test_a_duplicate_email_shows_409(docs: Docs) -> None:
    first = new_user()
    create = docs.operation("post_users")
    create.body(first)
    assert create.execute()[0] == 201
    create.body(new_user(email=first["email"].upper()))
    status, problem = create.execute()
    assert status == 409
    assert problem["title"] == "Conflict"
    assert problem["errors"] == [
        {"index": None, "field": "email", "message": f"email {first['email']} is already taken"}
    ]


def test_a_bad_field_shows_422(docs: Docs) -> None:
    create = docs.operation("post_users")
    create.body(new_user(username="no spaces allowed"))
    status, problem = create.execute()
    assert status == 422
    assert problem["title"] == "Unprocessable Content"
    assert problem["errors"] == [
        {
            "index": None,
            "field": "username",
            "message": "use 3 to 30 letters, digits, '.', '_' or '-'",
        }
    ]


@pytest.mark.parametrize(
    ("url", "foreign"),
    [
        ("https://localhost/docs", False),  # the default port, written or not, is one origin
        ("https://localhost:443/openapi.json", False),
        ("http://localhost/docs", True),
        ("https://localhost:8443/docs", True),
        ("https://cdn.example.com/swagger-ui.css", True),
    ],
)
def test_the_deployed_check_tells_other_origins_apart(url: str, foreign: bool) -> None:
    assert (origin_of(url) != origin_of("https://localhost:443")) is foreign
    assert (origin_of(url) != origin_of("https://localhost")) is foreign


def test_authorize_gives_the_page_a_key_and_without_one_it_gets_401(
    unauthorized_docs: Docs,
) -> None:
    docs, page = unauthorized_docs, unauthorized_docs.page
    search = docs.operation("get_users_search")
    search.fill("q", "anyone")
    status, problem = search.execute()
    assert status == 401
    assert problem["detail"] == "send an API key: Authorization: Bearer KEY"
    # The padlocks say which operations need a key; Authorize with a read key.
    assert page.locator(".opblock .authorization__btn").count() == 7
    authorize(page, READ_KEY)
    status, found = search.execute()
    assert status == 200
    assert found["total"] == 0
    create = docs.operation("post_users")
    create.body(new_user())
    status, problem = create.execute()
    assert status == 403
    assert problem["title"] == "Forbidden"
