"""Problem documents: every error of the users API is answered as application/problem+json
(RFC 9457), titled with RFC 9110's reason phrase, with the problem in words and a list of
items (the batch item, the field, the message).

``ApiError`` is what the API raises to answer with one; ``init_app()`` answers it, Flask's own
errors (an unknown route, a method a route does not take, a body too large) and anything
unexpected in the same shape. ``usersapi.create_app()`` wires this in.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterable, Mapping
from http import HTTPStatus
from typing import IO

from flask import Flask, Response, current_app, request
from pydantic import BaseModel
from werkzeug.exceptions import ClientDisconnected, HTTPException, RequestEntityTooLarge
from werkzeug.wsgi import LimitedStream

PROBLEM_TYPE = "about:blank"
# The headers an error of Flask's own carries that its problem document keeps.
KEPT_HEADERS = ("Allow", "WWW-Authenticate", "Retry-After")
log = logging.getLogger("usersapi")

# RFC 9110's reason phrases. (Python's HTTPStatus gives the older names of 413, 414, 416 and
# 422 before 3.13.)
REASON_PHRASES = {
    **{status.value: status.phrase for status in HTTPStatus},
    413: "Content Too Large",
    414: "URI Too Long",
    416: "Range Not Satisfiable",
    422: "Unprocessable Content",
}


def reason_phrase(status: int) -> str:
    return REASON_PHRASES.get(status, "Error")


class ProblemItem(BaseModel):
    index: int | None
    field: str | None
    message: str


class Problem(BaseModel):
    """An error, as application/problem+json (RFC 9457)."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[ProblemItem]


class ApiError(Exception):
    """An error answered to the client as a problem document."""

    def __init__(
        self,
        status: int,
        detail: str,
        errors: Iterable[ProblemItem] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = list(errors)
        self.headers = dict(headers or {})


def json_response(payload: object, status: int = HTTPStatus.OK) -> Response:
    # The final newline keeps a shell prompt off the end of curl's output.
    return current_app.response_class(
        json.dumps(payload, separators=(",", ":")) + "\n",
        status=status,
        mimetype="application/json",
    )


def problem_of(status: int, detail: str, errors: Iterable[ProblemItem] = ()) -> Problem:
    """The problem document of an answer with STATUS, titled with its reason phrase."""
    title = reason_phrase(status)
    return Problem(
        type=PROBLEM_TYPE, title=title, status=status, detail=detail, errors=list(errors)
    )


def problem_response(
    status: int,
    detail: str,
    errors: Iterable[ProblemItem] = (),
    headers: Mapping[str, str] | None = None,
) -> Response:
    problem = problem_of(status, detail, errors)
    response = json_response(problem.model_dump(mode="json"), status)
    response.mimetype = "application/problem+json"
    response.headers.update(headers or {})
    return response


def handle_api_error(exc: ApiError) -> Response:
    return problem_response(exc.status, exc.detail, exc.errors, exc.headers)


def handle_http_exception(exc: HTTPException) -> Response:
    status = exc.code or HTTPStatus.INTERNAL_SERVER_ERROR
    kept = {name: value for name, value in exc.get_headers() if name in KEPT_HEADERS}
    return problem_response(status, exc.description or reason_phrase(status), [], kept)


# A body the API does not read (a refusal, a body too large) is read and dropped up to this
# size before the answer goes, so a keep-alive connection can carry the client's next
# request: gunicorn drops only 64 KiB of it by itself and then resets the connection, after
# its answer said "keep-alive" (and it ignores an application's Connection header).
DRAIN_LIMIT = 8 * 1024 * 1024


def drain_unread_body(response: Response) -> Response:
    length = request.content_length
    if not length or length > DRAIN_LIMIT:
        return response
    stream: IO[bytes] | LimitedStream
    try:
        stream = request.stream  # what the request read of it, if anything, is gone
    except RequestEntityTooLarge:  # refused before a byte was read
        stream = LimitedStream(request.environ["wsgi.input"], length)
    with contextlib.suppress(ClientDisconnected):
        while stream.read(65536):
            pass
    return response


def handle_unexpected(exc: Exception) -> Response:
    log.error("unhandled error on %s %s", request.method, request.path, exc_info=exc)
    detail = "the server could not answer this request"
    return problem_response(HTTPStatus.INTERNAL_SERVER_ERROR, detail)


def init_app(app: Flask) -> None:
    """Answer ApiError, Flask's own errors and anything unexpected as problem documents
    (error handlers registered later for more specific exceptions win over these), and read
    what a request sent that its answer did not need."""
    app.after_request(drain_unread_body)
    app.register_error_handler(ApiError, handle_api_error)
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(Exception, handle_unexpected)
