"""The OpenAPI document of the users API and its interactive page, /docs.

Each route describes itself with ``@documented(operation(...))`` next to its code, naming the
pydantic models of its body, parameters and answers; ``openapi_document()`` walks the app's
URL map, collects those operations and the JSON schemas of every model they name, and
``init_app()`` serves the result at /openapi.json with Swagger UI at /docs. Nothing here knows
about users: ``usersapi.create_app()`` wires it in.

Why not a library: flask-openapi3 and spectree both generate a document from pydantic models,
but flask-openapi3 rebuilds a model's JSON schema on every request it validates (about 200 µs
for the search parameters, measured) and its body validation cannot express this API's
contract (415 and 400 before 422, every item's errors at once); spectree wraps every response
in a new one (about 13 µs a request, measured) and has no place for named examples, problem
documents or response headers. Both would still need the examples and error documents below.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from importlib.resources import files
from typing import Any, TypeVar

from flask import Blueprint, Flask, Response, current_app, json, send_from_directory
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from werkzeug.exceptions import NotFound

Document = dict[str, Any]
View = TypeVar("View", bound=Callable[..., Any])
REF_TEMPLATE = "#/components/schemas/{model}"


# --------------------------------------------------------------------------------------
# Describing operations
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ref:
    """A model named in an operation: a $ref to its schema in the document's components."""

    model: type[BaseModel]


@dataclass(frozen=True)
class Setting:
    """A value known only when the app is made (such as the largest batch), by name."""

    name: str


@dataclass(frozen=True)
class Text:
    """A text with {name} placeholders for settings."""

    template: str


def one_or_many(model: type[BaseModel], max_items: Setting) -> Document:
    """One object, or an array of 1 to MAX_ITEMS of them."""
    many = {"type": "array", "items": Ref(model), "minItems": 1, "maxItems": max_items}
    return {"oneOf": [Ref(model), many]}


def content(
    schema: object,
    media_type: str = "application/json",
    examples: Mapping[str, Any] | None = None,
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


@dataclass(frozen=True)
class Answers:
    """What an operation answers: SUCCESS = (status, schema or None) with HEADERS, a problem
    document for each of ERRORS (EXAMPLES gives named examples by status), and OTHERS."""

    success: tuple[int, object]
    errors: tuple[int, ...] = ()
    headers: Mapping[str, Any] | None = None
    examples: Mapping[int, Mapping[str, Any]] | None = None
    others: Mapping[int, Document] | None = None  # further answers that are not errors


def operation(
    summary: str,
    answers: Answers,
    *,
    body: object = None,
    body_examples: Mapping[str, Any] | None = None,
    parameters: Iterable[Document] = (),
    description: str | Text = "",
    security: list[dict[str, list[str]]] | None = None,
) -> Document:
    op: Document = {"summary": summary}
    if description:
        op["description"] = description
    if body is not None:
        op["requestBody"] = {"required": True, **content(body, examples=body_examples)}
    if parameters:
        op["parameters"] = list(parameters)
    if security is not None:
        op["security"] = security
    op["x-answers"] = answers  # turned into "responses" when the document is built
    return op


def documented(op: Document) -> Callable[[View], View]:
    """Attach an operation to a view function; openapi_document() finds it there."""

    def attach(view: View) -> View:
        view.openapi_operation = op  # type: ignore[attr-defined]
        return view

    return attach


# --------------------------------------------------------------------------------------
# Building the document
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problems:
    """How errors are described: their model, media type and the reason phrase of a status."""

    model: type[BaseModel]
    media_type: str
    reason: Callable[[int], str]


def responses(answers: Answers, problems: Problems) -> Document:
    status, schema = answers.success
    success: Document = {"description": problems.reason(status)}
    if schema is not None:
        success.update(content(schema))
    if answers.headers:
        success["headers"] = dict(answers.headers)
    described = {str(status): success}
    for other, answer in (answers.others or {}).items():
        described[str(other)] = {"description": problems.reason(other), **answer}
    for error in answers.errors:
        examples = (answers.examples or {}).get(error)
        described[str(error)] = {
            "description": problems.reason(error),
            **content(Ref(problems.model), problems.media_type, examples),
        }
    return described


def resolved(value: object, models: set[type[BaseModel]], settings: Mapping[str, Any]) -> Any:
    """VALUE as JSON: each Ref becomes a $ref (its model is added to MODELS), each Setting
    and Text takes its value from SETTINGS."""
    if isinstance(value, Ref):
        models.add(value.model)
        return {"$ref": REF_TEMPLATE.format(model=value.model.__name__)}
    if isinstance(value, Setting):
        return settings[value.name]
    if isinstance(value, Text):
        return value.template.format_map(settings)
    if isinstance(value, dict):
        return {key: resolved(item, models, settings) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [resolved(item, models, settings) for item in value]
    return value


def openapi_path(rule: str) -> str:
    """/users/<userid:user_id> as OpenAPI writes it: /users/{user_id}."""
    return re.sub(r"<(?:[^<>:]+:)?([^<>]+)>", r"{\1}", rule)


def openapi_document(
    app: Flask,
    info: Mapping[str, str],
    problems: Problems,
    security_schemes: Mapping[str, Any],
    settings: Mapping[str, Any],
) -> Document:
    """The OpenAPI 3.1 document of every documented route of APP; SETTINGS gives the values
    its operations leave to the app (such as the largest batch)."""
    models: set[type[BaseModel]] = {problems.model}
    paths: dict[str, Document] = {}
    for rule in app.url_map.iter_rules():
        op = getattr(app.view_functions[rule.endpoint], "openapi_operation", None)
        if op is None:
            continue
        methods = sorted((rule.methods or set()) - {"HEAD", "OPTIONS"})
        described = {key: item for key, item in op.items() if key != "x-answers"}
        described["responses"] = responses(op["x-answers"], problems)
        for method in methods:
            item = paths.setdefault(openapi_path(rule.rule), {})
            item[method.lower()] = resolved(described, models, settings)
    _, definitions = models_json_schema(
        [(model, "serialization") for model in sorted(models, key=lambda m: m.__name__)],
        ref_template=REF_TEMPLATE,
    )
    return {
        "openapi": "3.1.0",
        "info": dict(info),
        "paths": paths,
        "components": {
            "schemas": definitions["$defs"],
            "securitySchemes": dict(security_schemes),
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
  <title>{title}</title>
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
# persistAuthorization: a key given to "Authorize" survives a reload of the page (in the
# browser's local storage for this origin only).
DOCS_INITIALIZER = """window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    displayRequestDuration: true,
    persistAuthorization: true,
    validatorUrl: null
  });
});
"""
OPENAPI = "usersapi.openapi"

pages = Blueprint("docs", __name__)


@pages.get("/openapi.json")
@documented(operation("This document", Answers((200, {"type": "object"}))))
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
    title = current_app.extensions[OPENAPI]["info"]["title"]
    response = current_app.response_class(DOCS_PAGE.format(title=title), mimetype="text/html")
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


def init_app(app: Flask, document: Callable[[Flask], Document]) -> None:
    """Serve /openapi.json and /docs. DOCUMENT builds the document once every route is
    registered (call this last in the app factory)."""
    app.register_blueprint(pages)
    app.extensions[OPENAPI] = document(app)
