"""The OpenAPI document of the users API, served at /openapi.json, and its interactive page,
Swagger UI at /docs.

``openapi_document()`` describes every route from the pydantic models that the API passes
in (the schemas come from the models themselves) with examples of each answer, problem
documents included; ``init_app()`` serves it. ``usersapi.create_app()`` wires this in;
nothing here imports the API.

Why not a library (measured; see docs/developing.md): flask-openapi3 rebuilds a model's
JSON schema on every request it validates (about 200 µs for the search parameters) and its
body validation cannot express this API's contract (415 and 400 before 422, every item's
errors at once); spectree wraps every response in a new one (about 13 µs a request) and has
no place for named examples, problem documents or response headers, which this document
needs and would still be written by hand.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from importlib.resources import files
from typing import Any

from flask import Blueprint, Flask, Response, current_app, json, send_from_directory
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from werkzeug.exceptions import NotFound

from usersapi_auth import REFUSALS
from usersapi_problems import Problem, ProblemItem, problem_of, reason_phrase

Document = dict[str, Any]
REF_TEMPLATE = "#/components/schemas/{model}"


@dataclass(frozen=True)
class ApiModels:
    """The models the document describes, as the API defines them."""

    new_user: type[BaseModel]
    changes: type[BaseModel]
    edit: type[BaseModel]
    user: type[BaseModel]
    page: type[BaseModel]
    page_query: type[BaseModel]
    search_query: type[BaseModel]
    health: type[BaseModel]


@dataclass(frozen=True)
class ApiFacts:
    """What the document says that the API decides: its version, the largest batch and, by
    field, the message for a value that breaks its rule."""

    version: str
    max_batch: int
    rules: Mapping[str, str]


# --------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------


def ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF_TEMPLATE.format(model=model.__name__)}


def one_or_many(model: type[BaseModel], max_items: int) -> Document:
    many = {"type": "array", "items": ref(model), "minItems": 1, "maxItems": max_items}
    return {"oneOf": [ref(model), many]}


def content(
    schema: Mapping[str, Any],
    media_type: str = "application/json",
    examples: Mapping[str, tuple[str, object]] | None = None,
) -> Document:
    """A content map; EXAMPLES maps a name to (summary, value)."""
    media: Document = {"schema": schema}
    if examples:
        media["examples"] = {
            name: {"summary": summary, "value": value}
            for name, (summary, value) in examples.items()
        }
    return {"content": {media_type: media}}


def header_parameter(name: str, description: str) -> Document:
    return {
        "name": name,
        "in": "header",
        "required": False,
        "description": description,
        "schema": {"type": "string"},
    }


def query_parameters(model: type[BaseModel]) -> list[Document]:
    """The fields of a query model, each a parameter with its schema and description."""
    schema = model.model_json_schema()
    required = set(schema.get("required", []))
    return [
        {
            "name": name,
            "in": "query",
            "required": name in required,
            "description": prop.get("description", ""),
            "schema": prop,
        }
        for name, prop in schema["properties"].items()
    ]


ETAG = {
    "ETag": {
        "description": 'the user\'s version as a strong entity tag, such as "3"',
        "schema": {"type": "string"},
    }
}
SINGLE_ETAG = {"ETag": {**ETAG["ETag"], "description": "when one user was sent: its ETag"}}
IF_MATCH = header_parameter(
    "If-Match", 'apply only while the user\'s ETag is one of these (or "*"); else 412'
)
IF_NONE_MATCH = header_parameter(
    "If-None-Match", "answer 304 without a body while the user's ETag is one of these"
)
# Any other id is answered 404, like an id no user has.
USER_ID = {
    "name": "user_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[0-9a-fA-F]{24}$"},
}
READ, WRITE = [{"bearerAuth": ["read"]}], [{"bearerAuth": ["write"]}]
BEARER_SCHEME = {
    "type": "http",
    "scheme": "bearer",
    "description": "An API key, sent as Authorization: Bearer KEY. A read key may GET; a write "
    "key may do everything, POST, PATCH and DELETE included.",
}
KEYED = (401, 403, 503)  # every /users route: no key, a read key on a write, MongoDB down
WRITE_ERRORS = (400, 405, 413, 415, 422, *KEYED)


# --------------------------------------------------------------------------------------
# Examples: the bodies a client sends, and what the API answers when they are wrong
# --------------------------------------------------------------------------------------

ADA = {"name": "Ada Lovelace", "email": "ada@example.com", "username": "ada"}
TURING = {"name": "Alan Turing", "email": "alan@example.com", "username": "alan"}
HOPPER = {"name": "Grace Hopper", "email": "grace@example.com", "username": "grace"}
ADA_ID, TURING_ID = "665f1c2e8b3e4a1f2c3d4e5f", "665f1c2e8b3e4a1f2c3d4e60"
BATCH_RULES = (
    "Send one object, or an array of 1 to {max_batch} of them (the answer has the same shape, "
    "in input order). A batch is checked as a whole before anything is written: if any item "
    "is invalid (422), names an unknown user (404) or an email that is taken or repeated in "
    "the batch (409), nothing is written and every problem is listed, with its item's index. "
    "Emails are unique, compared lower-cased."
)
BAD_EMAIL = "value is not a valid email address: An email address must have an @-sign."


def error_examples(facts: ApiFacts) -> dict[int, dict[str, tuple[str, Document]]]:
    """Examples of each error status, for one user and for a batch where they differ."""

    def problem(status: int, detail: str, *errors: tuple[int | None, str, str]) -> Document:
        items = [ProblemItem(index=index, field=name, message=msg) for index, name, msg in errors]
        return problem_of(status, detail, items).model_dump(mode="json")

    rules, taken, invalid = facts.rules, "some emails are already in use", "some users are invalid"
    too_many = f"a batch holds at most {facts.max_batch} users, got {facts.max_batch + 1}"
    repeated = "email alan@example.com is repeated in the batch (item 0)"
    return {
        400: {
            "body": ("A body that is not JSON", problem(400, "the body is not valid JSON")),
            "query": (
                "A query parameter out of range",
                problem(400, "invalid query parameters", (None, "limit", rules["limit"])),
            ),
        },
        401: {
            "missing": ("No key", problem(401, REFUSALS["missing"].detail)),
            "invalid": ("A key that is not valid", problem(401, REFUSALS["invalid"].detail)),
        },
        403: {"read": ("A read key", problem(403, REFUSALS["insufficient_scope"].detail))},
        404: {
            "one": (
                "One user",
                problem(404, "the user does not exist", (None, "id", f"no user has id {ADA_ID}")),
            ),
            "batch": (
                "A batch",
                problem(404, "some users do not exist", (1, "id", f"no user has id {TURING_ID}")),
            ),
        },
        405: {
            "method": (
                "A method the path does not take",
                problem(405, "The method is not allowed for the requested URL."),
            )
        },
        409: {
            "one": (
                "One user",
                problem(409, taken, (None, "email", "email ada@example.com is already taken")),
            ),
            "batch": (
                "A batch",
                problem(409, "an email is repeated in the batch", (1, "email", repeated)),
            ),
        },
        413: {"batch": ("A batch too large", problem(413, too_many))},
        415: {
            "type": (
                "A body not declared as JSON",
                problem(415, "send the body as application/json"),
            )
        },
        422: {
            "one": ("One user", problem(422, invalid, (None, "email", BAD_EMAIL))),
            "batch": (
                "A batch",
                problem(422, invalid, (0, "name", "required"), (1, "username", rules["username"])),
            ),
        },
        503: {
            "database": (
                "MongoDB cannot be reached",
                problem(503, "the database cannot be reached; try again shortly"),
            )
        },
    }


# --------------------------------------------------------------------------------------
# The document
# --------------------------------------------------------------------------------------


class Operations:
    """Builds operations that share the API's problem documents and their examples."""

    def __init__(self, models: ApiModels, facts: ApiFacts) -> None:
        self.models = models
        self.facts = facts
        self.examples = error_examples(facts)

    def responses(
        self, ok: tuple[int, Mapping[str, Any] | None], errors: Iterable[int], headers: Any
    ) -> Document:
        status, schema = ok
        success: Document = {"description": reason_phrase(status)}
        if schema is not None:
            success.update(content(schema))
        if headers:
            success["headers"] = headers
        described = {str(status): success}
        for error in sorted(set(errors)):
            described[str(error)] = {
                "description": reason_phrase(error),
                **content(ref(Problem), "application/problem+json", self.examples.get(error)),
            }
        return described

    def __call__(
        self,
        summary: str,
        ok: tuple[int, Mapping[str, Any] | None],
        errors: Iterable[int] = (),
        *,
        body: Mapping[str, Any] | None = None,
        body_examples: Mapping[str, tuple[str, object]] | None = None,
        parameters: Iterable[Document] = (),
        description: str = "",
        headers: Any = None,
        security: list[dict[str, list[str]]] | None = None,
    ) -> Document:
        """An operation answering OK = (status, schema) with HEADERS, or a problem document
        for each of ERRORS."""
        op: Document = {"summary": summary, "responses": self.responses(ok, errors, headers)}
        if description:
            op["description"] = description
        if body is not None:
            op["requestBody"] = {"required": True, **content(body, examples=body_examples)}
        if parameters:
            op["parameters"] = list(parameters)
        if security is not None:
            op["security"] = security
        return op


def users_paths(m: ApiModels, operation: Operations, max_batch: int) -> Document:
    rules = BATCH_RULES.format(max_batch=max_batch)
    get_one = operation(
        "One user",
        (200, ref(m.user)),
        (404, *KEYED),
        parameters=[USER_ID, IF_NONE_MATCH],
        headers=ETAG,
        security=READ,
    )
    get_one["responses"]["304"] = {"description": reason_phrase(304), "headers": ETAG}

    def page_read(summary: str, query: type[BaseModel]) -> Document:
        """A read of a page of users, its parameters from QUERY."""
        parameters = query_parameters(query)
        return operation(
            summary, (200, ref(m.page)), (400, *KEYED), parameters=parameters, security=READ
        )

    return {
        "/users": {
            "post": operation(
                "Create one user or a batch",
                (201, one_or_many(m.user, max_batch)),
                (*WRITE_ERRORS, 409),
                body=one_or_many(m.new_user, max_batch),
                body_examples={"one": ("One user", ADA), "batch": ("A batch", [TURING, HOPPER])},
                description=rules,
                headers=SINGLE_ETAG,
                security=WRITE,
            ),
            "patch": operation(
                "Edit one user or a batch, by id; an item with a version applies only to the "
                "user at that version",
                (200, one_or_many(m.user, max_batch)),
                (*WRITE_ERRORS, 404, 409, 412),
                body=one_or_many(m.edit, max_batch),
                body_examples={
                    "one": ("One user", {"id": ADA_ID, "name": "Ada King"}),
                    "batch": (
                        "A batch",
                        [
                            {"id": ADA_ID, "email": "ada.king@example.com"},
                            {"id": TURING_ID, "username": "turing"},
                        ],
                    ),
                },
                description=rules + " Each item names the user by id; only the fields sent change.",
                headers=SINGLE_ETAG,
                security=WRITE,
            ),
            "get": page_read("List users", m.page_query),
        },
        "/users/search": {
            "get": page_read("Users whose name, email or username contains q", m.search_query),
        },
        "/users/{user_id}": {
            "get": get_one,
            "patch": operation(
                "Edit one user",
                (200, ref(m.user)),
                (*WRITE_ERRORS, 404, 409, 412),
                body=ref(m.changes),
                body_examples={"name": ("A new name", {"name": "Ada King"})},
                parameters=[USER_ID, IF_MATCH],
                description="Only the fields sent change; the email stays unique.",
                headers=ETAG,
                security=WRITE,
            ),
            "delete": operation(
                "Delete one user",
                (204, None),
                (404, 412, *KEYED),
                parameters=[USER_ID, IF_MATCH],
                security=WRITE,
            ),
        },
    }


def openapi_document(models: ApiModels, facts: ApiFacts) -> Document:
    """The OpenAPI 3.1 document: every route, its parameters, body and answers, the
    schemas of the models they name, and the bearer scheme of the API keys."""
    operation = Operations(models, facts)
    schemas = (models.new_user, models.changes, models.edit, models.user, models.page)
    _, definitions = models_json_schema(
        [(model, "serialization") for model in (*schemas, Problem, models.health)],
        ref_template=REF_TEMPLATE,
    )
    health = ref(models.health)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Users API", "version": facts.version},
        "paths": {
            **users_paths(models, operation, facts.max_batch),
            "/health": {"get": operation("The process is up", (200, health))},
            "/ready": {"get": operation("MongoDB answers", (200, health), (503,))},
            "/openapi.json": {"get": operation("This document", (200, {"type": "object"}))},
        },
        "components": {
            "schemas": definitions["$defs"],
            "securitySchemes": {"bearerAuth": BEARER_SCHEME},
        },
    }


# --------------------------------------------------------------------------------------
# Serving it: /openapi.json and Swagger UI at /docs
# --------------------------------------------------------------------------------------

# Swagger UI from the pinned flask-swagger-ui package, which bundles its assets; only the
# page, its initializer and the files it loads are served, all from this origin. The
# initializer is a file rather than the stock inline script, so the page's
# Content-Security-Policy can allow scripts from 'self' alone. Swagger UI draws icons from
# data: URIs; validatorUrl null keeps it from asking validator.swagger.io for a badge.
SWAGGER_UI_DIR = files("flask_swagger_ui") / "dist"
SWAGGER_UI_ASSETS = frozenset({"swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png"})
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Users API</title>
  <link rel="stylesheet" href="/docs/swagger-ui.css">
  <link rel="icon" type="image/png" href="/docs/favicon-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/swagger-ui-bundle.js"></script>
  <script src="/docs/swagger-initializer.js"></script>
</body>
</html>
"""
DOCS_INITIALIZER = """window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    displayRequestDuration: true,
    validatorUrl: null
  });
});
"""
OPENAPI = "usersapi.openapi"

pages = Blueprint("docs", __name__)


@pages.get("/openapi.json")
def openapi() -> Response:
    # The final newline keeps a shell prompt off the end of curl's output.
    return current_app.response_class(
        json.dumps(current_app.extensions[OPENAPI]) + "\n", mimetype="application/json"
    )


@pages.get("/")
@pages.get("/docs/")
def to_docs() -> Response:
    return current_app.response_class(status=HTTPStatus.FOUND, headers={"Location": "/docs"})


@pages.get("/docs")
def docs() -> Response:
    response = current_app.response_class(DOCS_PAGE, mimetype="text/html")
    response.headers["Content-Security-Policy"] = DOCS_CSP
    return response


@pages.get("/docs/swagger-initializer.js")
def docs_initializer() -> Response:
    return current_app.response_class(DOCS_INITIALIZER, mimetype="text/javascript")


@pages.get("/docs/<asset>")
def docs_asset(asset: str) -> Response:
    if asset not in SWAGGER_UI_ASSETS:
        raise NotFound("no such documentation file")
    return send_from_directory(str(SWAGGER_UI_DIR), asset)


def init_app(app: Flask, models: ApiModels, facts: ApiFacts) -> None:
    """Serve the document of MODELS and FACTS at /openapi.json, and /docs."""
    app.extensions[OPENAPI] = openapi_document(models, facts)
    app.register_blueprint(pages)
