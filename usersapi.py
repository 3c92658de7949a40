"""Users API: a Flask + MongoDB (pymongo) service for creating, reading, searching,
editing and deleting users.

The module reads top to bottom: configuration, models and validation, data access,
routes, request ids and logging, metrics and the app factory. Production runs
``gunicorn`` with the settings of gunicorn.conf.py (``usersapi:create_app()``);
``python usersapi.py`` starts a development server on port 8000.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from http import HTTPStatus
from importlib.resources import files
from importlib.util import find_spec
from pathlib import Path
from typing import Annotated, Any, Literal, Self, TypeVar
from urllib.parse import urlsplit, urlunsplit

import pymongo
from bson import ObjectId
from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    g,
    has_request_context,
    request,
    send_from_directory,
)
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema, models_json_schema
from pydantic_core import ErrorDetails
from pymongo import ASCENDING, MongoClient, UpdateOne
from pymongo.collection import Collection
from pymongo.errors import (
    BulkWriteError,
    ConnectionFailure,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
)
from werkzeug import routing
from werkzeug.datastructures import ETags
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

__version__ = "2.0.0"

log = logging.getLogger("usersapi")

# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------

IN_MEMORY_URI = "mongomock://"
MONGO_SETTINGS = (
    "MONGO_URI",
    "MONGO_HOST",
    "MONGO_PORT",
    "MONGO_USER",
    "MONGO_PASSWORD",
    "MONGO_AUTH_SOURCE",
)
LOG_FORMATS = ("json", "text")


class ConfigError(RuntimeError):
    """The environment does not describe a usable configuration."""


def read_setting(env: Mapping[str, str], name: str) -> str | None:
    """Value of NAME, or the content of the file named by NAME_FILE (Docker secrets)."""
    value, path = env.get(name), env.get(f"{name}_FILE")
    if value is not None and path is not None:
        raise ConfigError(f"set {name} or {name}_FILE, not both")
    if path is None:
        return value
    try:
        return Path(path).read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise ConfigError(f"{name}_FILE: cannot read {path}: {exc.strerror}") from None


def read_int(env: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def read_log_format(env: Mapping[str, str]) -> str:
    """LOG_FORMAT, json or text (json when unset); gunicorn.conf.py reads it here too."""
    value = env.get("LOG_FORMAT", "json").strip().lower() or "json"
    if value not in LOG_FORMATS:
        raise ConfigError(f"LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}, got {value!r}")
    return value


def has_mongo_settings(env: Mapping[str, str]) -> bool:
    return any(name in env or f"{name}_FILE" in env for name in MONGO_SETTINGS)


def redact_uri(uri: str) -> str:
    """The URI with any password replaced, safe to log."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass(frozen=True)
class Settings:
    """Everything the service reads from its environment."""

    mongo_uri: str = field(repr=False)
    mongo_username: str | None = None
    mongo_password: str | None = field(default=None, repr=False)
    mongo_auth_source: str = "admin"
    mongo_db: str = "usersdb"
    mongo_timeout_ms: int = 5000
    mongo_op_timeout_ms: int = 5000
    mongo_pool_size: int = 10
    max_batch: int = 1000
    max_content_length: int = 1024 * 1024
    log_level: str = "INFO"
    log_format: str = "json"
    version: str = __version__

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Self:
        env = os.environ if env is None else env
        if not has_mongo_settings(env):
            raise ConfigError(
                "no MongoDB configuration: set MONGO_URI (or MONGO_URI_FILE), or MONGO_HOST "
                "with MONGO_USER and MONGO_PASSWORD (or MONGO_PASSWORD_FILE); "
                f"MONGO_URI={IN_MEMORY_URI} selects an in-memory store"
            )
        uri = read_setting(env, "MONGO_URI")
        if uri is None:
            host = env.get("MONGO_HOST", "localhost")
            port = read_int(env, "MONGO_PORT", 27017)
            uri = f"mongodb://{host}:{port}/"
        if not uri.startswith(("mongodb://", "mongodb+srv://", IN_MEMORY_URI)):
            raise ConfigError(
                "MONGO_URI must start with mongodb://, mongodb+srv:// or mongomock://"
            )
        if uri.startswith(IN_MEMORY_URI) and find_spec("mongomock") is None:
            raise ConfigError(f"MONGO_URI={IN_MEMORY_URI} needs the mongomock package installed")
        return cls(
            mongo_uri=uri,
            mongo_username=read_setting(env, "MONGO_USER") or None,
            mongo_password=read_setting(env, "MONGO_PASSWORD") or None,
            mongo_auth_source=env.get("MONGO_AUTH_SOURCE", "admin"),
            mongo_db=env.get("MONGO_DB", "usersdb"),
            mongo_timeout_ms=read_int(env, "MONGO_TIMEOUT_MS", 5000),
            mongo_op_timeout_ms=read_int(env, "MONGO_OP_TIMEOUT_MS", 5000),
            mongo_pool_size=read_int(env, "MONGO_POOL_SIZE", 10),
            max_batch=read_int(env, "MAX_BATCH", 1000),
            max_content_length=read_int(env, "MAX_CONTENT_LENGTH", 1024 * 1024),
            log_level=env.get("LOG_LEVEL", "INFO").upper(),
            log_format=read_log_format(env),
            # The image sets it from its build argument, so /openapi.json names the image.
            version=env.get("USERSAPI_VERSION") or __version__,
        )

    @property
    def in_memory(self) -> bool:
        return self.mongo_uri.startswith(IN_MEMORY_URI)

    def describe(self) -> str:
        """A one-line summary for the logs, without secrets."""
        store = "in-memory store (mongomock)" if self.in_memory else redact_uri(self.mongo_uri)
        user = f" as {self.mongo_username}" if self.mongo_username else ""
        return f"MongoDB {store}{user}, database {self.mongo_db}"


# --------------------------------------------------------------------------------------
# Models and validation
# --------------------------------------------------------------------------------------

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
Username = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{3,30}$")]
Email = Annotated[EmailStr, AfterValidator(str.lower)]  # stored and compared lower-cased
ObjectIdStr = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{24}$")]
Version = Annotated[int, Field(strict=True, ge=1)]  # 1 on create, +1 on every change


class UserIn(BaseModel):
    """A new user."""

    model_config = ConfigDict(extra="forbid", title="UserIn")

    name: Name
    email: Email
    username: Username


class UserChanges(BaseModel):
    """The fields of an existing user to change; at least one."""

    model_config = ConfigDict(
        extra="forbid", title="UserChanges", json_schema_extra={"minProperties": 1}
    )

    # None stands for "not sent": explicit nulls are rejected and left out of the schema.
    name: Name | SkipJsonSchema[None] = None
    email: Email | SkipJsonSchema[None] = None
    username: Username | SkipJsonSchema[None] = None

    # check_fields=False: version is a field of the batch item (UserEdit) only.
    @field_validator("name", "email", "username", "version", mode="before", check_fields=False)
    @classmethod
    def reject_null(cls, value: object) -> object:
        if value is None:
            raise ValueError("may not be null")
        return value

    @model_validator(mode="after")
    def require_a_change(self) -> Self:
        if not self.model_fields_set - {"id", "version"}:
            raise ValueError("give at least one of name, email, username")
        return self

    def changes(self) -> dict[str, str]:
        return self.model_dump(include={"name", "email", "username"}, exclude_unset=True)


class UserEdit(UserChanges):
    """One item of a batch edit: the user's id, the fields to change and, optionally, the
    version the change was made from (the edit is refused if the user has moved on)."""

    model_config = ConfigDict(title="UserEdit", json_schema_extra={"minProperties": 2})

    # Any string is accepted here: an id that is not an ObjectId is reported as not found.
    id: str
    version: Version | SkipJsonSchema[None] = None


class User(BaseModel):
    """A user as the API returns it."""

    id: ObjectIdStr
    name: str
    email: str
    username: str
    version: Version
    created_at: datetime
    updated_at: datetime


class UserPage(BaseModel):
    """One page of users."""

    items: list[User]
    total: int
    limit: int
    offset: int


class PageQuery(BaseModel):
    """Pagination parameters of the listing and search endpoints."""

    model_config = ConfigDict(extra="ignore")

    limit: int = Field(default=50, ge=1, le=500, description="How many users a page holds.")
    offset: int = Field(
        default=0, ge=0, le=2**31 - 1, description="How many users to skip, in creation order."
    )


class SearchQuery(PageQuery):
    # Some non-blank text; NUL cannot travel in a BSON regular expression.
    q: str = Field(
        min_length=1,
        max_length=200,
        pattern=r"^[^\x00]*[^\x00\s][^\x00]*$",
        description="Text that the name, email or username contains, in any letter case; "
        "taken literally (not a pattern).",
    )


# RFC 9110's reason phrases, the titles of problem documents. (Python's HTTPStatus gives the
# older names of 413 and 422 before 3.13.) 428, 429 and 431 are RFC 6585's.
REASON_PHRASES = {
    200: "OK",
    201: "Created",
    204: "No Content",
    304: "Not Modified",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    408: "Request Timeout",
    409: "Conflict",
    410: "Gone",
    411: "Length Required",
    412: "Precondition Failed",
    413: "Content Too Large",
    414: "URI Too Long",
    415: "Unsupported Media Type",
    416: "Range Not Satisfiable",
    417: "Expectation Failed",
    421: "Misdirected Request",
    422: "Unprocessable Content",
    426: "Upgrade Required",
    428: "Precondition Required",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
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


class Health(BaseModel):
    status: Literal["ok"]


QueryT = TypeVar("QueryT", bound=PageQuery)
ModelT = TypeVar("ModelT", bound=BaseModel)


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


# What each field takes, in words: the message when a value breaks the field's rule.
FIELD_RULES = {
    "name": "use 1 to 100 characters, not only spaces",
    "email": "use an email address, such as ada@example.com",
    "username": "use 3 to 30 letters, digits, '.', '_' or '-'",
    "id": "use the user's id, a string",
    "version": "use the user's version, a whole number from 1 up",
    "q": "use 1 to 200 characters, not only spaces",
    "limit": "use a whole number from 1 to 500",
    "offset": "use a whole number from 0 to 2147483647",
}


def human_message(error: ErrorDetails, field: str | None) -> str:
    """pydantic's error in words for people: no patterns, no model names."""
    kind = error["type"]
    if kind == "missing":
        return "required"
    if kind == "extra_forbidden":
        return "not a field of a user"
    if kind == "model_type":
        return "send each user as a JSON object"
    if kind == "value_error":  # the validators' own messages and the email checker's
        return error["msg"].removeprefix("Value error, ")
    return FIELD_RULES.get(field or "", error["msg"])


def problem_items(exc: ValidationError, index: int | None) -> list[ProblemItem]:
    """pydantic's errors as problem items, one per invalid field.

    The models are flat, so the first part of an error's location names the field. An
    optional field is a union with None; its "should be None" error says nothing useful.
    """
    items = []
    for error in exc.errors(include_url=False, include_input=False):
        if error["type"] == "none_required":
            continue
        field = str(error["loc"][0]) if error["loc"] else None
        message = human_message(error, field)
        items.append(ProblemItem(index=index, field=field, message=message))
    return items


def parse_query(model: type[QueryT]) -> QueryT:
    try:
        return model.model_validate(request.args.to_dict())
    except ValidationError as exc:
        raise ApiError(
            HTTPStatus.BAD_REQUEST, "invalid query parameters", problem_items(exc, None)
        ) from None


def read_json_body() -> object:
    """The request body as JSON: 415 unless it is declared JSON, 400 unless it parses."""
    if not request.is_json:
        raise ApiError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send the body as application/json")
    try:
        return json.loads(request.get_data(cache=False))
    except (ValueError, RecursionError):
        raise ApiError(HTTPStatus.BAD_REQUEST, "the body is not valid JSON") from None


def read_batch(max_batch: int) -> tuple[list[object], bool]:
    """The body as a list of items, and whether it came as a single object."""
    body = read_json_body()
    if isinstance(body, dict):
        record_batch_size(1)
        return [body], True
    if isinstance(body, list) and body:
        record_batch_size(len(body))
        if len(body) > max_batch:
            raise ApiError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"a batch holds at most {max_batch} users, got {len(body)}",
            )
        return body, False
    raise ApiError(HTTPStatus.BAD_REQUEST, "send one user object or a non-empty array of them")


def validate_items(
    model: type[ModelT], items: list[object]
) -> tuple[dict[int, ModelT], list[ProblemItem]]:
    """The valid items by their index in the batch, and every field error of the others."""
    valid, errors = {}, []
    for index, item in enumerate(items):
        try:
            valid[index] = model.model_validate(item)
        except ValidationError as exc:
            errors.extend(problem_items(exc, index))
    return valid, errors


def repeated(values: Mapping[int, str], field: str) -> list[ProblemItem]:
    """An error for each item that repeats the value of an earlier item of the batch."""
    first_seen: dict[str, int] = {}
    errors = []
    for index, value in values.items():
        if value in first_seen:
            message = f"{field} {value} is repeated in the batch (item {first_seen[value]})"
            errors.append(ProblemItem(index=index, field=field, message=message))
        else:
            first_seen[value] = index
    return errors


@dataclass
class BatchErrors:
    """Everything wrong with a batch, by kind, from the gravest to the least grave."""

    invalid: list[ProblemItem] = field(default_factory=list)  # 422
    missing: list[ProblemItem] = field(default_factory=list)  # 404
    stale: list[ProblemItem] = field(default_factory=list)  # 412
    repeated_emails: list[ProblemItem] = field(default_factory=list)  # 409
    taken_emails: list[ProblemItem] = field(default_factory=list)  # 409

    def all(self) -> list[ProblemItem]:
        errors = self.invalid + self.missing + self.stale
        errors += self.repeated_emails + self.taken_emails
        return sorted(errors, key=lambda error: error.index or 0)

    def conflict_detail(self) -> str:
        if not self.taken_emails:
            return "an email is repeated in the batch"
        if not self.repeated_emails:
            return "some emails are already in use"
        return "some emails are repeated in the batch or already in use"


def reject_batch(errors: BatchErrors) -> None:
    """Refuse a batch with any error, listing them all. The status is that of the gravest
    kind: invalid fields (422), unknown users (404), users changed since the version the
    edit was made from (412), then emails repeated or in use (409)."""
    if errors.invalid:
        raise ApiError(HTTPStatus.UNPROCESSABLE_ENTITY, "some users are invalid", errors.all())
    if errors.missing:
        raise ApiError(HTTPStatus.NOT_FOUND, "some users do not exist", errors.all())
    if errors.stale:
        detail = "some users have changed since the version given"
        raise ApiError(HTTPStatus.PRECONDITION_FAILED, detail, errors.all())
    if errors.repeated_emails or errors.taken_emails:
        raise ApiError(HTTPStatus.CONFLICT, errors.conflict_detail(), errors.all())


# --------------------------------------------------------------------------------------
# Data access
# --------------------------------------------------------------------------------------

Document = dict[str, Any]
DUPLICATE_KEY = 11000


def now() -> datetime:
    """The current time at MongoDB's precision (milliseconds), in UTC."""
    moment = datetime.now(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def to_object_id(user_id: str) -> ObjectId | None:
    return ObjectId(user_id) if ObjectId.is_valid(user_id) else None


EDITABLE_FIELDS = ("name", "email", "username", "updated_at")
# A restore (stack/swarm.sh restore) holds this collection's lock while it replaces the users;
# meanwhile every /users request answers 503. Read at most once a second per worker.
RESTORE_LOCK = "restore_lock"
LOCK_POLL_SECONDS = 1.0
RETRY_AFTER = {"Retry-After": "5"}


def version_of(doc: Document) -> int:
    """The user's version; documents written before versions existed count as 1."""
    version: int = doc.get("version", 1)
    return version


def to_user(doc: Document) -> User:
    return User.model_validate({**doc, "id": str(doc["_id"]), "version": version_of(doc)})


def at_versions(versions: Iterable[int]) -> Document:
    """A filter for users at one of these versions (version 1 includes a missing version)."""
    wanted: list[int | None] = [*sorted(versions)]
    if 1 in wanted:
        wanted.append(None)
    return {"version": {"$in": wanted}}


def contains_text(text: str) -> Document:
    """A filter for users whose name, email or username contains TEXT, case-insensitive.

    The text is escaped, so it is matched literally and never read as a pattern.
    """
    pattern = {"$regex": re.escape(text), "$options": "i"}
    return {"$or": [{"name": pattern}, {"email": pattern}, {"username": pattern}]}


def first_failure(exc: BulkWriteError) -> int:
    """Index of the first write of a bulk write that failed."""
    return int(first_write_error(exc).get("index", 0))


def first_write_error(exc: BulkWriteError) -> Mapping[str, Any]:
    errors = exc.details.get("writeErrors") or [{}]
    error: Mapping[str, Any] = errors[0]
    return error


class ChangedMeanwhileError(Exception):
    """A compare-and-set found a user at another version than the one the edit was made from:
    a concurrent request changed it. The batch's own writes have been undone."""


def taken_meanwhile(exc: BulkWriteError, docs: list[Document]) -> Exception:
    """The error to answer when the unique index stopped a batch: a 409 naming the email a
    concurrent request took since the batch was checked, or EXC itself for any other cause."""
    if first_write_error(exc).get("code") != DUPLICATE_KEY:
        return exc
    index = first_failure(exc)
    message = f"email {docs[index]['email']} was taken by a concurrent request"
    error = ProblemItem(index=index, field="email", message=message)
    return ApiError(HTTPStatus.CONFLICT, "an email is already in use", [error])


def make_client(settings: Settings) -> MongoClient[Document]:
    if settings.in_memory:
        from inmemory import in_memory_client  # noqa: PLC0415 - development and tests only

        client: MongoClient[Document] = in_memory_client()
        return client
    # Credentials from MONGO_USER and MONGO_PASSWORD; otherwise those in MONGO_URI, if any.
    credentials: dict[str, Any] = {}
    if settings.mongo_username is not None:
        credentials = {
            "username": settings.mongo_username,
            "password": settings.mongo_password,
            "authSource": settings.mongo_auth_source,
        }
    return MongoClient(
        settings.mongo_uri,
        **credentials,
        tz_aware=True,
        appname="usersapi",
        serverSelectionTimeoutMS=settings.mongo_timeout_ms,
        connectTimeoutMS=settings.mongo_timeout_ms,
        # Bounded pool per worker; idle connections are closed well before swarm's
        # overlay networking silently drops them (after about 15 minutes).
        maxPoolSize=settings.mongo_pool_size,
        maxIdleTimeMS=5 * 60 * 1000,
    )


class UserStore:
    """The users collection. The client is created on first use, so each gunicorn worker
    opens its own after the fork, and the unique email index is ensured on the first call
    that reaches MongoDB (the API may start before the database does)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: MongoClient[Document] | None = None
        self._users: Collection[Document] | None = None
        self._lock = threading.Lock()
        self._lock_poll = threading.Lock()
        self._locked = False
        self._lock_read_until = 0.0

    def client(self) -> MongoClient[Document]:
        with self._lock:
            if self._client is None:
                self._client = make_client(self.settings)
            return self._client

    def users(self) -> Collection[Document]:
        """The collection, once its unique email index is ensured. It is kept for the life of
        the worker: looking it up through the client again costs about 10 µs a call."""
        if self._users is None:
            collection = self.client()[self.settings.mongo_db]["users"]
            collection.create_index([("email", ASCENDING)], unique=True, name="email_unique")
            self._users = collection
        return self._users

    def ping(self) -> None:
        self.client().admin.command("ping")

    def restore_in_progress(self) -> bool:
        """Whether a restore holds the lock (a document in restore_lock whose expires_at is
        ahead), read from MongoDB at most once every LOCK_POLL_SECONDS. After a restore, the
        unique email index is ensured again before the collection is used."""
        now = time.monotonic()
        if now < self._lock_read_until:
            return self._locked
        with self._lock_poll:
            if now >= self._lock_read_until:
                database = self.client()[self.settings.mongo_db]
                lock = database[RESTORE_LOCK].find_one({"expires_at": {"$gt": datetime.now(UTC)}})
                if self._locked and lock is None:
                    self._users = None
                self._locked = lock is not None
                self._lock_read_until = now + LOCK_POLL_SECONDS
        return self._locked

    # -- reads -------------------------------------------------------------------------
    def get(self, user_id: str) -> Document | None:
        oid = to_object_id(user_id)
        return None if oid is None else self.users().find_one({"_id": oid})

    def page(self, query: Document, limit: int, offset: int) -> tuple[list[Document], int]:
        users = self.users()
        total = users.count_documents(query)
        docs = list(users.find(query).sort("_id", ASCENDING).skip(offset).limit(limit))
        return docs, total

    def owners_of(self, emails: Iterable[str]) -> dict[str, ObjectId]:
        """Who holds each of these emails, in one query."""
        wanted = list(set(emails))
        if not wanted:
            return {}
        found = self.users().find({"email": {"$in": wanted}}, {"email": 1}, batch_size=len(wanted))
        return {doc["email"]: doc["_id"] for doc in found}

    def find_many(self, ids: Iterable[ObjectId]) -> dict[ObjectId, Document]:
        wanted = list(set(ids))
        if not wanted:
            return {}
        found = self.users().find({"_id": {"$in": wanted}}, batch_size=len(wanted))
        return {doc["_id"]: doc for doc in found}

    # -- writes ------------------------------------------------------------------------
    def insert_all(self, docs: list[Document]) -> None:
        """Insert every document or none: if the unique index rejects one (a concurrent
        request took the email), the ones already written are removed again."""
        users = self.users()
        try:
            users.insert_many(docs, ordered=True)
        except BulkWriteError as exc:
            users.delete_many({"_id": {"$in": [doc["_id"] for doc in docs]}})
            raise taken_meanwhile(exc, docs) from None

    def update_all(self, before: list[Document], after: list[Document]) -> None:
        """Turn every user from BEFORE into AFTER, or none. Each write is a compare-and-set:
        it applies only while the user is still at the version it has in BEFORE. If one finds
        the user changed (ChangedMeanwhileError) or the unique index rejects one (409), the
        writes already applied are undone."""
        users = self.users()
        # Marks this batch's writes, so an undo finds exactly them: a concurrent request that
        # won a compare-and-set writes the same version number, but never this mark.
        write_id = uuid.uuid4().hex
        writes = [
            self._compare_and_set(old, new, write_id)
            for old, new in zip(before, after, strict=True)
        ]
        try:
            result = users.bulk_write(writes, ordered=True)
        except BulkWriteError as exc:
            applied = first_failure(exc)  # an ordered bulk write stops at its first failure
            self._undo(before[:applied], write_id)
            raise taken_meanwhile(exc, after) from None
        if result.matched_count < len(after):
            self._undo(before, write_id)
            raise ChangedMeanwhileError

    @staticmethod
    def _compare_and_set(old: Document, new: Document, write_id: str) -> UpdateOne:
        """Write NEW's fields and version, marked with WRITE_ID, while the user is at OLD's
        version."""
        fields = {key: new[key] for key in EDITABLE_FIELDS}
        update = {**fields, "version": version_of(new), "write_id": write_id}
        return UpdateOne({"_id": old["_id"], **at_versions([version_of(old)])}, {"$set": update})

    def _undo(self, before: list[Document], write_id: str) -> None:
        """Put BEFORE back on the users that the write WRITE_ID changed, and only on those."""
        if before:
            reverts = [
                UpdateOne(
                    {"_id": old["_id"], "write_id": write_id},
                    {
                        "$set": {
                            **{key: old[key] for key in EDITABLE_FIELDS},
                            "version": version_of(old),
                        },
                        "$unset": {"write_id": ""},
                    },
                )
                for old in before
            ]
            self.users().bulk_write(reverts, ordered=False)

    def delete(self, user_id: str, versions: frozenset[int] | None = None) -> bool:
        """Delete the user, if it is at one of VERSIONS (any version when None)."""
        oid = to_object_id(user_id)
        if oid is None:
            return False
        match = {"_id": oid} if versions is None else {"_id": oid, **at_versions(versions)}
        return self.users().delete_one(match).deleted_count == 1


# --------------------------------------------------------------------------------------
# Use cases: whole batches are checked before anything is written
# --------------------------------------------------------------------------------------


def emails_in_use(
    store: UserStore, emails: Mapping[int, str], own_ids: Mapping[int, ObjectId]
) -> list[ProblemItem]:
    """An error for each email that a user other than the item's own already holds."""
    owners = store.owners_of(emails.values())
    return [
        ProblemItem(index=index, field="email", message=f"email {email} is already taken")
        for index, email in emails.items()
        if email in owners and owners[email] != own_ids.get(index)
    ]


def has_changed(index: int | None, field: str, version: int) -> ProblemItem:
    message = f"the user has changed: it is now at version {version}"
    return ProblemItem(index=index, field=field, message=message)


def changed_since(
    versions: Mapping[int, int], wanted: Mapping[int, frozenset[int]], field: str
) -> list[ProblemItem]:
    """An error for each user whose current version is not one the item was made from."""
    return [
        has_changed(index, field, versions[index])
        for index, accepted in wanted.items()
        if index in versions and versions[index] not in accepted
    ]


def create_users(store: UserStore, items: list[object]) -> list[User]:
    new_users, invalid = validate_items(UserIn, items)
    emails = {index: user.email for index, user in new_users.items()}
    reject_batch(
        BatchErrors(
            invalid=invalid,
            repeated_emails=repeated(emails, "email"),
            taken_emails=emails_in_use(store, emails, {}),
        )
    )
    moment = now()
    docs = [
        {
            "_id": ObjectId(),
            **user.model_dump(),
            "version": 1,
            "created_at": moment,
            "updated_at": moment,
        }
        for user in new_users.values()
    ]
    store.insert_all(docs)
    return [to_user(doc) for doc in docs]


EDIT_ATTEMPTS = 20


def edit_users(
    store: UserStore, items: list[object], if_match: frozenset[int] | None = None
) -> list[User]:
    """Edit a batch of users; IF_MATCH holds the versions a single edit may apply to.

    A batch that loses a race to a concurrent edit of one of its users (ChangedMeanwhileError) is
    checked and written again: an item given with a version then fails with 412, and an
    item without one is applied on top of the concurrent change."""
    for _ in range(EDIT_ATTEMPTS):
        try:
            return edit_users_once(store, items, if_match)
        except ChangedMeanwhileError:
            continue
    detail = "the users kept changing while the batch was written; send it again"
    raise ApiError(HTTPStatus.CONFLICT, detail)


def edit_users_once(
    store: UserStore, items: list[object], if_match: frozenset[int] | None
) -> list[User]:
    edits, invalid = validate_items(UserEdit, items)
    invalid += repeated({index: edit.id for index, edit in edits.items()}, "id")
    ids = {index: to_object_id(edit.id) for index, edit in edits.items()}
    existing = store.find_many(oid for oid in ids.values() if oid is not None)
    found = {index: oid for index, oid in ids.items() if oid is not None and oid in existing}
    missing = [
        ProblemItem(index=index, field="id", message=f"no user has id {edit.id}")
        for index, edit in edits.items()
        if index not in found
    ]
    versions = {index: version_of(existing[oid]) for index, oid in found.items()}
    given = {i: frozenset({edit.version}) for i, edit in edits.items() if edit.version is not None}
    stale = changed_since(versions, given, "version")
    if if_match is not None:
        stale += changed_since(versions, {0: if_match}, "If-Match")
    emails = {index: edit.email for index, edit in edits.items() if edit.email is not None}
    reject_batch(
        BatchErrors(
            invalid=invalid,
            missing=missing,
            stale=stale,
            repeated_emails=repeated(emails, "email"),
            taken_emails=emails_in_use(store, emails, found),
        )
    )
    moment = now()
    before = [existing[oid] for oid in found.values()]
    after = [
        {**doc, **edit.changes(), "version": version_of(doc) + 1, "updated_at": moment}
        for doc, edit in zip(before, edits.values(), strict=True)
    ]
    store.update_all(before, after)
    return [to_user(doc) for doc in after]


def user_not_found(user_id: str) -> ApiError:
    error = ProblemItem(index=None, field="id", message=f"no user has id {user_id}")
    return ApiError(HTTPStatus.NOT_FOUND, "the user does not exist", [error])


def remove_user(store: UserStore, user_id: str, if_match: frozenset[int] | None) -> None:
    """Delete the user; with IF_MATCH, only while it is at one of those versions."""
    if store.delete(user_id, if_match):
        return
    doc = store.get(user_id)
    if doc is None:
        raise user_not_found(user_id)
    stale = has_changed(None, "If-Match", version_of(doc))
    raise ApiError(HTTPStatus.PRECONDITION_FAILED, "the user has changed", [stale])


# --------------------------------------------------------------------------------------
# Routes
# --------------------------------------------------------------------------------------


class UserIdConverter(routing.BaseConverter):
    """Any one path segment names a user, except "search": /users/search is the search
    resource, whatever the method (so a DELETE there is 405, not an unknown user). A
    segment that is not a valid id is a user that does not exist: 404 naming it."""

    regex = "(?!search$)[^/]+"


bp = Blueprint("users", __name__)  # /users: the users' data
service = Blueprint("service", __name__)  # health, readiness, documentation, metrics
PROBLEM_TYPE = "about:blank"
AUTH_FAILURES = {13, 18}  # Unauthorized, AuthenticationFailed


def store() -> UserStore:
    user_store: UserStore = current_app.extensions["usersapi.store"]
    return user_store


def settings() -> Settings:
    app_settings: Settings = current_app.extensions["usersapi.settings"]
    return app_settings


def json_response(payload: object, status: int = HTTPStatus.OK) -> Response:
    # The final newline keeps a shell prompt off the end of curl's output.
    return current_app.response_class(
        json.dumps(payload, separators=(",", ":")) + "\n",
        status=status,
        mimetype="application/json",
    )


def user_response(user: User, status: int = HTTPStatus.OK) -> Response:
    """One user, with its version as a strong entity tag."""
    response = json_response(user.model_dump(mode="json"), status)
    response.set_etag(str(user.version))
    return response


def accepted_versions(if_match: ETags) -> frozenset[int] | None:
    """The versions an If-Match header accepts: None when absent or "*" (any version).
    Only strong tags count (RFC 9110's strong comparison); a tag that is not one of ours
    matches no version."""
    if not if_match or if_match.star_tag:
        return None
    tags = [tag for tag in if_match.as_set() if tag]
    # Versions are 64-bit integers in MongoDB: no longer tag can be one of them.
    return frozenset(int(tag) for tag in tags if tag.isascii() and tag.isdigit() and len(tag) < 19)


def no_content() -> Response:
    response = current_app.response_class(status=HTTPStatus.NO_CONTENT)
    del response.headers["Content-Type"]
    return response


def dump(users: list[User]) -> list[object]:
    return [user.model_dump(mode="json") for user in users]


def page_of(query: Document, page: PageQuery) -> Response:
    docs, total = store().page(query, page.limit, page.offset)
    items = [to_user(doc).model_dump(mode="json") for doc in docs]
    return json_response(
        {"items": items, "total": total, "limit": page.limit, "offset": page.offset}
    )


@bp.before_request
def refuse_during_restore() -> None:
    if store().restore_in_progress():
        detail = "the users are being restored from a backup; try again in a few seconds"
        raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, detail, headers=RETRY_AFTER)


@service.get("/health")
def health() -> Response:
    return json_response({"status": "ok"})


@service.get("/ready")
def ready() -> Response:
    store().ping()
    return json_response({"status": "ok"})


def write(
    action: Callable[[UserStore, list[object]], list[User]], items: list[object], *, single: bool
) -> list[User]:
    """Run a batch write; errors of a single-object request carry no item index."""
    try:
        return action(store(), items)
    except ApiError as exc:
        if single:
            for error in exc.errors:
                error.index = None
        raise


@bp.post("/users")
def post_users() -> Response:
    items, single = read_batch(settings().max_batch)
    created = write(create_users, items, single=single)
    if not single:
        return json_response(dump(created), HTTPStatus.CREATED)
    response = user_response(created[0], HTTPStatus.CREATED)
    response.headers["Location"] = f"/users/{created[0].id}"
    return response


@bp.patch("/users")
def patch_users() -> Response:
    items, single = read_batch(settings().max_batch)
    edited = write(edit_users, items, single=single)
    if single:
        return user_response(edited[0])
    return json_response(dump(edited))


@bp.get("/users")
def list_users() -> Response:
    return page_of({}, parse_query(PageQuery))


@bp.get("/users/search")
def search_users() -> Response:
    query = parse_query(SearchQuery)
    return page_of(contains_text(query.q), query)


@bp.get("/users/<userid:user_id>")
def get_user(user_id: str) -> Response:
    doc = store().get(user_id)
    if doc is None:
        raise user_not_found(user_id)
    user = to_user(doc)
    # If-None-Match uses the weak comparison (RFC 9110), and "*" matches any user.
    if request.if_none_match.contains_weak(str(user.version)):
        not_modified = current_app.response_class(status=HTTPStatus.NOT_MODIFIED)
        not_modified.set_etag(str(user.version))
        return not_modified
    return user_response(user)


NOT_IN_BODY = {"id": "the id is taken from the path", "version": "send the version as If-Match"}


@bp.patch("/users/<userid:user_id>")
def patch_user(user_id: str) -> Response:
    body = read_json_body()
    if not isinstance(body, dict):
        raise ApiError(HTTPStatus.BAD_REQUEST, "send the fields to change as a JSON object")
    misplaced = [
        ProblemItem(index=None, field=name, message=message)
        for name, message in NOT_IN_BODY.items()
        if name in body
    ]
    if misplaced:
        raise ApiError(HTTPStatus.UNPROCESSABLE_ENTITY, "some users are invalid", misplaced)
    if_match = accepted_versions(request.if_match)
    edit = partial(edit_users, if_match=if_match)
    (edited,) = write(edit, [{**body, "id": user_id}], single=True)
    return user_response(edited)


@bp.delete("/users/<userid:user_id>")
def delete_user(user_id: str) -> Response:
    remove_user(store(), user_id, accepted_versions(request.if_match))
    return no_content()


@service.get("/openapi.json")
def openapi() -> Response:
    return json_response(current_app.extensions["usersapi.openapi"])


# Interactive documentation: Swagger UI from the pinned flask-swagger-ui package, which
# bundles its assets; only the page, its initializer and the files it loads are served, all
# from this origin. The initializer is a file rather than the stock inline script, so the
# page's Content-Security-Policy can allow scripts from 'self' alone. Swagger UI draws
# icons from data: URIs; validatorUrl null keeps it from asking validator.swagger.io for a
# badge.
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


@service.get("/")
@service.get("/docs/")
def to_docs() -> Response:
    return current_app.response_class(status=HTTPStatus.FOUND, headers={"Location": "/docs"})


@service.get("/docs")
def docs() -> Response:
    response = current_app.response_class(DOCS_PAGE, mimetype="text/html")
    response.headers["Content-Security-Policy"] = DOCS_CSP
    return response


@service.get("/docs/swagger-initializer.js")
def docs_initializer() -> Response:
    return current_app.response_class(DOCS_INITIALIZER, mimetype="text/javascript")


@service.get("/docs/<asset>")
def docs_asset(asset: str) -> Response:
    if asset not in SWAGGER_UI_ASSETS:
        raise ApiError(HTTPStatus.NOT_FOUND, "no such documentation file")
    return send_from_directory(str(SWAGGER_UI_DIR), asset)


# --------------------------------------------------------------------------------------
# Errors: every failure is answered as application/problem+json
# --------------------------------------------------------------------------------------


def problem_response(
    status: int, detail: str, errors: list[ProblemItem], headers: Mapping[str, str] | None = None
) -> Response:
    problem = Problem(
        type=PROBLEM_TYPE,
        title=reason_phrase(status),
        status=status,
        detail=detail,
        errors=errors,
    )
    response = json_response(problem.model_dump(mode="json"), status)
    response.mimetype = "application/problem+json"
    response.headers.update(headers or {})
    return response


def handle_api_error(exc: ApiError) -> Response:
    return problem_response(exc.status, exc.detail, exc.errors, exc.headers)


def handle_http_exception(exc: HTTPException) -> Response:
    status = exc.code or HTTPStatus.INTERNAL_SERVER_ERROR
    allow = {k: v for k, v in exc.get_headers() if k == "Allow"}
    return problem_response(status, exc.description or reason_phrase(status), [], allow)


def database_unavailable(
    detail: str = "the database cannot be reached; try again shortly",
) -> Response:
    return problem_response(HTTPStatus.SERVICE_UNAVAILABLE, detail, [], RETRY_AFTER)


def handle_database_error(exc: PyMongoError) -> Response:
    if exc.timeout and not isinstance(exc, ServerSelectionTimeoutError):
        record_database_error("timeout")
        log.warning("MongoDB did not answer within MONGO_OP_TIMEOUT_MS: %s", type(exc).__name__)
        return database_unavailable("the database did not answer in time; try again shortly")
    if isinstance(exc, ConnectionFailure):
        record_database_error("unreachable")
        log.warning("MongoDB unreachable: %s", type(exc).__name__)
        return database_unavailable()
    if isinstance(exc, OperationFailure) and exc.code in AUTH_FAILURES:
        record_database_error("credentials_refused")
        log.error("MongoDB refused the credentials (code %s)", exc.code)
        return database_unavailable()
    record_database_error(type(exc).__name__)
    return handle_unexpected(exc)


def handle_unexpected(exc: Exception) -> Response:
    log.error("unhandled error on %s %s", request.method, request.path, exc_info=exc)
    detail = "the server could not answer this request"
    return problem_response(HTTPStatus.INTERNAL_SERVER_ERROR, detail, [])


# --------------------------------------------------------------------------------------
# OpenAPI document, built from the models above
# --------------------------------------------------------------------------------------

SCHEMA_MODELS: tuple[type[BaseModel], ...] = (
    UserIn,
    UserChanges,
    UserEdit,
    User,
    UserPage,
    Problem,
    Health,
)


def ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def one_or_many(model: type[BaseModel], max_batch: int) -> dict[str, Any]:
    many = {"type": "array", "items": ref(model), "minItems": 1, "maxItems": max_batch}
    return {"oneOf": [ref(model), many]}


def json_content(
    schema: Mapping[str, Any],
    media_type: str = "application/json",
    examples: Mapping[str, Any] | None = None,
) -> Document:
    content: Document = {"schema": schema}
    if examples:
        content["examples"] = {
            name: {"summary": summary, "value": value}
            for name, (summary, value) in examples.items()
        }
    return {"content": {media_type: content}}


def problem(status: int, detail: str, *errors: tuple[int | None, str | None, str]) -> Document:
    """An example problem document, as the API answers it."""
    items = [ProblemItem(index=index, field=field, message=msg) for index, field, msg in errors]
    return Problem(
        type=PROBLEM_TYPE,
        title=reason_phrase(status),
        status=status,
        detail=detail,
        errors=items,
    ).model_dump(mode="json")


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


def problem_examples(max_batch: int) -> dict[int, dict[str, tuple[str, Document]]]:
    """Examples of each error status, for one user and for a batch where they differ."""
    taken = "some emails are already in use"
    invalid = "some users are invalid"
    return {
        400: {
            "body": ("A body that is not JSON", problem(400, "the body is not valid JSON")),
            "query": (
                "A query parameter out of range",
                problem(
                    400,
                    "invalid query parameters",
                    (None, "limit", FIELD_RULES["limit"]),
                ),
            ),
        },
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
                problem(
                    409,
                    "an email is repeated in the batch",
                    (1, "email", "email alan@example.com is repeated in the batch (item 0)"),
                ),
            ),
        },
        413: {
            "batch": (
                "A batch too large",
                problem(413, f"a batch holds at most {max_batch} users, got {max_batch + 1}"),
            )
        },
        415: {
            "type": (
                "A body not declared as JSON",
                problem(415, "send the body as application/json"),
            )
        },
        422: {
            "one": (
                "One user",
                problem(
                    422,
                    invalid,
                    (
                        None,
                        "email",
                        "value is not a valid email address: An email address must have an @-sign.",
                    ),
                ),
            ),
            "batch": (
                "A batch",
                problem(
                    422, invalid, (0, "name", "required"), (1, "username", FIELD_RULES["username"])
                ),
            ),
        },
        503: {
            "database": (
                "MongoDB cannot be reached",
                problem(503, "the database cannot be reached; try again shortly"),
            )
        },
    }


def problems(*statuses: int, examples: Mapping[int, Mapping[str, Any]] | None = None) -> Document:
    return {
        str(status): {
            "description": reason_phrase(status),
            **json_content(ref(Problem), "application/problem+json", (examples or {}).get(status)),
        }
        for status in statuses
    }


ETAG = {
    "ETag": {
        "description": 'the user\'s version as a strong entity tag, such as "3"',
        "schema": {"type": "string"},
    }
}
SINGLE_ETAG = {"ETag": {**ETAG["ETag"], "description": "when one user was sent: its ETag"}}


def precondition(name: str, description: str) -> Document:
    return {
        "name": name,
        "in": "header",
        "required": False,
        "description": description,
        "schema": {"type": "string"},
    }


IF_MATCH = precondition(
    "If-Match", 'apply only while the user\'s ETag is one of these (or "*"); else 412'
)
IF_NONE_MATCH = precondition(
    "If-None-Match", "answer 304 without a body while the user's ETag is one of these"
)


def query_parameters(model: type[PageQuery]) -> list[Document]:
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


def operation(
    summary: str,
    ok: tuple[int, Mapping[str, Any] | None],
    errors: tuple[int, ...],
    body: Mapping[str, Any] | None = None,
    parameters: list[Document] | None = None,
    *,
    body_examples: Mapping[str, Any] | None = None,
    error_examples: Mapping[int, Mapping[str, Any]] | None = None,
    description: str = "",
    headers: Mapping[str, Any] | None = None,
) -> Document:
    """An operation answering OK = (status, schema) with HEADERS, or a problem with ERRORS."""
    status, schema = ok
    success = {"description": reason_phrase(status), **(json_content(schema) if schema else {})}
    if headers:
        success["headers"] = headers
    responses = {str(status): success, **problems(*errors, examples=error_examples)}
    op: Document = {"summary": summary, "responses": responses}
    if description:
        op["description"] = description
    if body is not None:
        op["requestBody"] = {"required": True, **json_content(body, examples=body_examples)}
    if parameters:
        op["parameters"] = parameters
    return op


def openapi_document(max_batch: int, version: str) -> Document:
    _, definitions = models_json_schema(
        [(model, "serialization") for model in SCHEMA_MODELS],
        ref_template="#/components/schemas/{model}",
    )
    # Any other id is answered 404, like an id no user has.
    id_schema = {"type": "string", "pattern": "^[0-9a-fA-F]{24}$"}
    user_id = [{"name": "user_id", "in": "path", "required": True, "schema": id_schema}]
    page = ref(UserPage)
    write_errors = (400, 405, 413, 415, 422, 503)
    errors = problem_examples(max_batch)
    rules = BATCH_RULES.format(max_batch=max_batch)
    get_one = operation(
        "One user",
        (200, ref(User)),
        (404, 503),
        parameters=[*user_id, IF_NONE_MATCH],
        error_examples=errors,
        headers=ETAG,
    )
    get_one["responses"]["304"] = {"description": reason_phrase(304), "headers": ETAG}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Users API", "version": version},
        "paths": {
            "/users": {
                "post": operation(
                    "Create one user or a batch",
                    (201, one_or_many(User, max_batch)),
                    (*write_errors, 409),
                    one_or_many(UserIn, max_batch),
                    body_examples={
                        "one": ("One user", ADA),
                        "batch": ("A batch", [TURING, HOPPER]),
                    },
                    error_examples=errors,
                    description=rules,
                    headers=SINGLE_ETAG,
                ),
                "patch": operation(
                    "Edit one user or a batch, by id; an item with a version applies only to "
                    "the user at that version",
                    (200, one_or_many(User, max_batch)),
                    (*write_errors, 404, 409, 412),
                    one_or_many(UserEdit, max_batch),
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
                    error_examples=errors,
                    description=rules + " Each item names the user by id; only the fields "
                    "sent change.",
                    headers=SINGLE_ETAG,
                ),
                "get": operation(
                    "List users",
                    (200, page),
                    (400, 503),
                    parameters=query_parameters(PageQuery),
                    error_examples=errors,
                ),
            },
            "/users/search": {
                "get": operation(
                    "Users whose name, email or username contains q",
                    (200, page),
                    (400, 503),
                    parameters=query_parameters(SearchQuery),
                    error_examples=errors,
                ),
            },
            "/users/{user_id}": {
                "get": get_one,
                "patch": operation(
                    "Edit one user",
                    (200, ref(User)),
                    (*write_errors, 404, 409, 412),
                    ref(UserChanges),
                    [*user_id, IF_MATCH],
                    body_examples={"name": ("A new name", {"name": "Ada King"})},
                    error_examples=errors,
                    description="Only the fields sent change; the email stays unique.",
                    headers=ETAG,
                ),
                "delete": operation(
                    "Delete one user",
                    (204, None),
                    (404, 412, 503),
                    parameters=[*user_id, IF_MATCH],
                    error_examples=errors,
                ),
            },
            "/health": {"get": operation("The process is up", (200, ref(Health)), ())},
            "/ready": {"get": operation("MongoDB answers", (200, ref(Health)), (503,))},
            "/openapi.json": {"get": operation("This document", (200, {"type": "object"}), ())},
        },
        "components": {"schemas": definitions["$defs"]},
    }


# --------------------------------------------------------------------------------------
# Request ids and logging: one id per request, in its response and in every log line
# --------------------------------------------------------------------------------------

REQUEST_ID_HEADER = "X-Request-ID"
# The same rule as the nginx ingress: anything else is replaced, never logged as sent.
SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
ACCESS_FIELDS = ("method", "path", "route", "status", "duration_ms", "client")
UNMATCHED_ROUTE = "<unmatched>"
access_log = logging.getLogger("usersapi.access")


def request_id_from(incoming: str | None) -> str:
    """The caller's X-Request-ID when it is sane, else a new unique one."""
    if incoming is not None and SANE_REQUEST_ID.fullmatch(incoming):
        return incoming
    return uuid.uuid4().hex


def current_request_id() -> str | None:
    return g.get("request_id") if has_request_context() else None


def request_id_of(record: logging.LogRecord) -> str | None:
    """The id of the request being served when RECORD was logged, if any. Handlers format
    records in the thread that logs them, so the request context is still the right one."""
    return getattr(record, "request_id", None) or current_request_id()


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the request id and, for the
    access line, the request's fields; a traceback travels inside the object."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": request_id_of(record),
        }
        entry.update({name: getattr(record, name, None) for name in ACCESS_FIELDS})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps({k: v for k, v in entry.items() if v is not None}, default=str)


class TextFormatter(logging.Formatter):
    """Readable lines for the development server, with the request id when there is one."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.request_id = request_id_of(record) or "-"
        return super().format(record)


def log_formatter(log_format: str = "json") -> logging.Formatter:
    """The formatter for a LOG_FORMAT as read_log_format gives it; gunicorn.conf.py gives
    gunicorn's own log the same."""
    return JsonFormatter() if log_format == "json" else TextFormatter()


def configure_logging(settings: Settings) -> None:
    """Log to stderr in the configured format, unless the process already has a handler
    (gunicorn.conf.py installs one with the same formatter; pytest installs its own)."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(log_formatter(settings.log_format))
        root.addHandler(handler)
    log.setLevel(settings.log_level)


def start_request() -> None:
    g.request_id = request_id_from(request.headers.get(REQUEST_ID_HEADER))
    g.started = time.perf_counter()


def start_database_deadline() -> None:
    """Every MongoDB operation of this request shares one deadline, MONGO_OP_TIMEOUT_MS from
    now (the driver's client-side operation timeout): a request never waits longer on
    MongoDB, and a restore can count on it."""
    deadline = pymongo.timeout(settings().mongo_op_timeout_ms / 1000)
    deadline.__enter__()
    g.database_deadline = deadline


def end_database_deadline(_exc: BaseException | None) -> None:
    deadline = g.pop("database_deadline", None)
    if deadline is not None:
        deadline.__exit__(None, None, None)


def route_label() -> str:
    """The URL rule that matched (a template such as /users/<userid:user_id>, never the
    path with its ids), or a fixed label when none did."""
    return request.url_rule.rule if request.url_rule is not None else UNMATCHED_ROUTE


def log_request(response: Response, request_id: str, route: str, seconds: float) -> None:
    method, path, status = request.method, request.path, response.status_code
    fields = {
        "request_id": request_id,
        "method": method,
        "path": path,
        "route": route,
        "status": status,
        "duration_ms": round(seconds * 1000, 2),
        "client": request.remote_addr,  # after ProxyFix: the address nginx saw
    }
    access_log.info("%s %s %s %.2f ms", method, path, status, seconds * 1000, extra=fields)


def finish_request(response: Response) -> Response:
    """Every response carries the request id; every request gets one access line and is
    counted in the metrics."""
    request_id = g.get("request_id")
    if request_id is None:  # a hook registered before start_request failed
        request_id = g.request_id = request_id_from(None)
    response.headers[REQUEST_ID_HEADER] = request_id
    seconds = time.perf_counter() - g.get("started", time.perf_counter())
    route = route_label()
    log_request(response, request_id, route, seconds)
    record_request(response, route, seconds)
    return response


# --------------------------------------------------------------------------------------
# Metrics: Prometheus text format, summed over gunicorn's workers
# --------------------------------------------------------------------------------------

KNOWN_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
BATCH_BUCKETS = (1, 2, 5, 10, 50, 100, 250, 500, 1000)
BATCH_OPERATIONS = {"POST": "create", "PATCH": "edit"}


@dataclass(frozen=True)
class Metrics:
    """The service's metrics, in a registry of the app's own (each app in a test counts
    from zero). Under gunicorn every worker writes its figures to files in
    PROMETHEUS_MULTIPROC_DIR (gunicorn.conf.py sets it up) and /metrics sums the files."""

    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    database_errors: Counter
    batch_sizes: Histogram

    @classmethod
    def create(cls) -> Self:
        registry = CollectorRegistry()
        return cls(
            registry=registry,
            requests=Counter(
                "usersapi_http_requests",
                "HTTP requests answered, by method, route template and status",
                ["method", "route", "status"],
                registry=registry,
            ),
            latency=Histogram(
                "usersapi_http_request_duration_seconds",
                "Time to answer an HTTP request, by method and route template",
                ["method", "route"],
                registry=registry,
            ),
            database_errors=Counter(
                "usersapi_mongodb_errors",
                "MongoDB errors answered as 503 or 500, by kind",
                ["kind"],
                registry=registry,
            ),
            batch_sizes=Histogram(
                "usersapi_batch_size",
                "Users in one POST or PATCH /users request, by operation",
                ["operation"],
                buckets=BATCH_BUCKETS,
                registry=registry,
            ),
        )


def metrics() -> Metrics:
    app_metrics: Metrics = current_app.extensions["usersapi.metrics"]
    return app_metrics


def record_request(response: Response, route: str, seconds: float) -> None:
    # Any token is a method to werkzeug: unknown ones share a label to keep the series few.
    method = request.method
    if method not in KNOWN_METHODS:
        method = "OTHER"
    app_metrics = metrics()
    app_metrics.requests.labels(method, route, str(response.status_code)).inc()
    app_metrics.latency.labels(method, route).observe(seconds)


def record_database_error(kind: str) -> None:
    metrics().database_errors.labels(kind).inc()


def record_batch_size(size: int) -> None:
    operation = BATCH_OPERATIONS.get(request.method, request.method.lower())
    metrics().batch_sizes.labels(operation).observe(size)


def exposition() -> bytes:
    """The metrics in Prometheus text format: the sum over every worker's files in
    multiprocess mode, else this process's own registry."""
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return generate_latest(metrics().registry)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


# Not in the OpenAPI document: an operator's endpoint, closed at the ingress, not part of
# the users API.
@service.get("/metrics")
def prometheus_metrics() -> Response:
    return current_app.response_class(exposition(), mimetype=None, content_type=CONTENT_TYPE_LATEST)


# --------------------------------------------------------------------------------------
# App factory
# --------------------------------------------------------------------------------------


def create_app(config: Settings | None = None) -> Flask:
    """The WSGI application. Without CONFIG, settings come from the environment."""
    settings = Settings.from_env() if config is None else config
    configure_logging(settings)
    app = Flask(__name__)
    # First registered: the request id exists before any other hook runs, and the access
    # line and metrics (after_request hooks run in reverse) see the final response.
    app.before_request(start_request)
    app.after_request(finish_request)
    app.before_request(start_database_deadline)
    app.teardown_request(end_database_deadline)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_content_length
    app.extensions["usersapi.settings"] = settings
    app.extensions["usersapi.store"] = UserStore(settings)
    app.extensions["usersapi.openapi"] = openapi_document(settings.max_batch, settings.version)
    app.extensions["usersapi.metrics"] = Metrics.create()
    app.url_map.converters["userid"] = UserIdConverter
    app.register_blueprint(bp)
    app.register_blueprint(service)
    app.register_error_handler(ApiError, handle_api_error)
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(PyMongoError, handle_database_error)
    app.register_error_handler(Exception, handle_unexpected)
    # One reverse proxy (nginx) stands in front in production.
    app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1)  # type: ignore[method-assign]
    log.info("usersapi ready: %s", settings.describe())
    return app


def main() -> None:
    """Development server on port 8000 (PORT); an in-memory store when nothing is set, and
    readable text logs unless LOG_FORMAT says otherwise."""
    os.environ.setdefault("LOG_FORMAT", "text")
    if not has_mongo_settings(os.environ):
        os.environ["MONGO_URI"] = IN_MEMORY_URI
        banner = "!" * 78
        print(
            f"{banner}\n"
            "  No MongoDB configuration: using an IN-MEMORY store (mongomock).\n"
            "  Data is lost on exit. Set MONGO_URI, or MONGO_HOST, MONGO_USER, MONGO_PASSWORD.\n"
            f"{banner}",
            file=sys.stderr,
        )
    try:
        app = create_app()
    except ConfigError as exc:
        sys.exit(f"usersapi: {exc}")
    app.run(host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ.get("PORT", "8000")))


if __name__ == "__main__":
    main()
