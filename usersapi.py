"""Users API: a Flask + MongoDB (pymongo) service for creating, reading, searching,
editing and deleting users, each request authorised by an API key.

The module reads top to bottom: configuration, models and validation, data access, the
batch use cases, routes, errors and the app factory. Its siblings hold what every route
shares, and ``create_app()`` wires them in: usersapi_settings (reading the environment),
usersapi_auth (checking each request's API key), usersapi_keys (the key file),
usersapi_problems (errors as problem documents),
usersapi_telemetry (request ids, logs, metrics) and usersapi_docs (the OpenAPI document and
/docs); none of them imports this module.
Production runs gunicorn with gunicorn.conf.py (``usersapi:create_app()``); devserver.py is
the development server.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from http import HTTPStatus
from importlib.util import find_spec
from typing import Annotated, Any, Literal, Self, TypeVar

import pymongo
from bson import ObjectId
from flask import Blueprint, Flask, Response, current_app, g, request
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    PositiveInt,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import ErrorDetails
from pydantic_settings import NoDecode
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
from werkzeug.middleware.proxy_fix import ProxyFix

import usersapi_auth as auth
import usersapi_docs as docs
import usersapi_keys as keys
import usersapi_problems as problems
import usersapi_telemetry as telemetry
from usersapi_problems import ApiError, ProblemItem, json_response, problem_response
from usersapi_settings import ConfigError, redact_uri

__version__ = "2.0.0"

log = logging.getLogger("usersapi")

# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------

IN_MEMORY_URI = "mongomock://"
MONGO_SETTINGS = {"mongo_uri", "mongo_host", "mongo_port", "mongo_user", "mongo_password"}


class Settings(telemetry.LogSettings):
    """Everything the service reads from its environment: each field from the variable of
    its name in upper case (MONGO_URI...), read by ``Settings.from_env()``."""

    # Secrets: each may come as NAME_FILE, a file holding the value (as Docker secrets arrive).
    SECRETS = ("MONGO_URI", "MONGO_USER", "MONGO_PASSWORD", "API_KEYS")

    mongo_uri: str = Field(default="", repr=False)  # may hold a password
    mongo_host: str = "localhost"
    mongo_port: int = Field(default=27017, ge=1, le=65535)
    mongo_user: str | None = None
    mongo_password: str | None = Field(default=None, repr=False)
    mongo_auth_source: str = "admin"
    mongo_db: str = "usersdb"
    mongo_timeout_ms: PositiveInt = 5000
    mongo_op_timeout_ms: PositiveInt = 5000
    mongo_pool_size: PositiveInt = 10
    max_batch: PositiveInt = 1000
    max_content_length: PositiveInt = 1024 * 1024
    # The key file's text (NoDecode: not JSON), parsed into keys by parse_key_file.
    api_keys: Annotated[tuple[keys.ApiKey, ...], NoDecode] = Field(default=(), repr=False)
    # The image sets it from its build argument, so /openapi.json names the image.
    usersapi_version: str = __version__

    @model_validator(mode="before")
    @classmethod
    def some_mongo_setting(cls, values: Any) -> Any:
        if isinstance(values, dict) and not MONGO_SETTINGS & set(values):
            raise ValueError(
                "no MongoDB configuration: set MONGO_URI (or MONGO_URI_FILE), or MONGO_HOST "
                "with MONGO_USER and MONGO_PASSWORD (or MONGO_PASSWORD_FILE); "
                f"MONGO_URI={IN_MEMORY_URI} selects an in-memory store"
            )
        return values

    @field_validator("api_keys", mode="before")
    @classmethod
    def parse_key_file(cls, value: object) -> object:
        return keys.parse_keys(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def usable_uri(self) -> Self:
        if not self.mongo_uri:
            uri = f"mongodb://{self.mongo_host}:{self.mongo_port}/"
            object.__setattr__(self, "mongo_uri", uri)  # frozen: set once, while validated
        if not self.mongo_uri.startswith(("mongodb://", "mongodb+srv://", IN_MEMORY_URI)):
            raise ValueError("MONGO_URI must start with mongodb://, mongodb+srv:// or mongomock://")
        if self.in_memory and find_spec("mongomock") is None:
            raise ValueError(f"MONGO_URI={IN_MEMORY_URI} needs the mongomock package installed")
        return self

    @property
    def in_memory(self) -> bool:
        return self.mongo_uri.startswith(IN_MEMORY_URI)

    def describe(self) -> str:
        """A one-line summary for the logs, without secrets."""
        store = "in-memory store (mongomock)" if self.in_memory else redact_uri(self.mongo_uri)
        user = f" as {self.mongo_user}" if self.mongo_user else ""
        key_names = f"{len(self.api_keys)} API keys ({', '.join(k.name for k in self.api_keys)})"
        return f"MongoDB {store}{user}, database {self.mongo_db}; {key_names}"


# --------------------------------------------------------------------------------------
# Models and validation
# --------------------------------------------------------------------------------------

# The field limits, written once: the models and the messages below both use them.
NAME_LENGTH = (1, 100)
USERNAME_LENGTH = (3, 30)
QUERY_LENGTH = (1, 200)
PAGE_LIMIT = (1, 500)
MAX_OFFSET = 2**31 - 1

Name = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=NAME_LENGTH[0], max_length=NAME_LENGTH[1]),
]
Username = Annotated[
    str,
    StringConstraints(
        min_length=USERNAME_LENGTH[0], max_length=USERNAME_LENGTH[1], pattern=r"^[A-Za-z0-9._-]*$"
    ),
]
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

    limit: int = Field(
        default=50, ge=PAGE_LIMIT[0], le=PAGE_LIMIT[1], description="How many users a page holds."
    )
    offset: int = Field(
        default=0, ge=0, le=MAX_OFFSET, description="How many users to skip, in creation order."
    )


class SearchQuery(PageQuery):
    # Some non-blank text; NUL cannot travel in a BSON regular expression.
    q: str = Field(
        min_length=QUERY_LENGTH[0],
        max_length=QUERY_LENGTH[1],
        pattern=r"^[^\x00]*[^\x00\s][^\x00]*$",
        description="Text that the name, email or username contains, in any letter case; "
        "taken literally (not a pattern).",
    )


class Health(BaseModel):
    status: Literal["ok"]


QueryT = TypeVar("QueryT", bound=PageQuery)
ModelT = TypeVar("ModelT", bound=BaseModel)


def span(limits: tuple[int, int]) -> str:
    return f"{limits[0]} to {limits[1]}"


# What each field takes, in words: the message when a value breaks the field's rule.
FIELD_RULES = {
    "name": f"use {span(NAME_LENGTH)} characters, not only spaces",
    "email": "use an email address, such as ada@example.com",
    "username": f"use {span(USERNAME_LENGTH)} letters, digits, '.', '_' or '-'",
    "id": "use the user's id, a string",
    "version": "use the user's version, a whole number from 1 up",
    "q": f"use {span(QUERY_LENGTH)} characters, not only spaces",
    "limit": f"use a whole number from {span(PAGE_LIMIT)}",
    "offset": f"use a whole number from 0 to {MAX_OFFSET}",
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


BATCH_OPERATIONS = {"POST": "create", "PATCH": "edit"}


def read_batch(max_batch: int) -> tuple[list[object], bool]:
    """The body as a list of items, and whether it came as a single object."""
    body = read_json_body()
    operation = BATCH_OPERATIONS[request.method]
    if isinstance(body, dict):
        telemetry.record_batch_size(operation, 1)
        return [body], True
    if isinstance(body, list) and body:
        telemetry.record_batch_size(operation, len(body))
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
EDITABLE_FIELDS = ("name", "email", "username", "updated_at")
# A restore (stack/swarm.sh restore) holds this collection's lock while it replaces the users;
# meanwhile every /users request answers 503. Read at most once a second per worker.
RESTORE_LOCK = "restore_lock"
LOCK_POLL_SECONDS = 1.0
RETRY_AFTER = {"Retry-After": "5"}


def now() -> datetime:
    """The current time at MongoDB's precision (milliseconds), in UTC."""
    moment = datetime.now(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def to_object_id(user_id: str) -> ObjectId | None:
    return ObjectId(user_id) if ObjectId.is_valid(user_id) else None


def same_id(user_id: str) -> str:
    """The id as MongoDB compares it: an ObjectId's hex digits in any letter case are one."""
    oid = to_object_id(user_id)
    return user_id if oid is None else str(oid)


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
    if settings.mongo_user is not None:
        credentials = {
            "username": settings.mongo_user,
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
        moment = time.monotonic()
        if moment < self._lock_read_until:
            return self._locked
        with self._lock_poll:
            if moment >= self._lock_read_until:
                database = self.client()[self.settings.mongo_db]
                lock = database[RESTORE_LOCK].find_one({"expires_at": {"$gt": datetime.now(UTC)}})
                if self._locked and lock is None:
                    self._users = None
                self._locked = lock is not None
                self._lock_read_until = moment + LOCK_POLL_SECONDS
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
    invalid += repeated({index: same_id(edit.id) for index, edit in edits.items()}, "id")
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


bp = Blueprint("users", __name__)  # /users: the users' data, behind API keys
service = Blueprint("service", __name__)  # open: health and readiness
AUTH_FAILURES = {13, 18}  # Unauthorized, AuthenticationFailed


def store() -> UserStore:
    user_store: UserStore = current_app.extensions["usersapi.store"]
    return user_store


def settings() -> Settings:
    app_settings: Settings = current_app.extensions["usersapi.settings"]
    return app_settings


@bp.before_request
def require_a_key() -> None:
    auth.require_key(settings().api_keys)


@bp.before_request
def refuse_during_restore() -> None:
    if store().restore_in_progress():
        detail = "the users are being restored from a backup; try again in a few seconds"
        raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, detail, headers=RETRY_AFTER)


@bp.after_request
def never_cached(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"  # personal data
    return response


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


@service.get("/health")
def health() -> Response:
    return json_response({"status": "ok"})


@service.get("/ready")
def ready() -> Response:
    store().ping()
    return json_response({"status": "ok"})


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


# --------------------------------------------------------------------------------------
# Errors: every failure is answered as application/problem+json
# --------------------------------------------------------------------------------------


def database_unavailable(
    detail: str = "the database cannot be reached; try again shortly",
) -> Response:
    return problem_response(HTTPStatus.SERVICE_UNAVAILABLE, detail, headers=RETRY_AFTER)


def handle_database_error(exc: PyMongoError) -> Response:
    if exc.timeout and not isinstance(exc, ServerSelectionTimeoutError):
        telemetry.record_database_error("timeout")
        log.warning("MongoDB did not answer within MONGO_OP_TIMEOUT_MS: %s", type(exc).__name__)
        return database_unavailable("the database did not answer in time; try again shortly")
    if isinstance(exc, ConnectionFailure):
        telemetry.record_database_error("unreachable")
        log.warning("MongoDB unreachable: %s", type(exc).__name__)
        return database_unavailable()
    if isinstance(exc, OperationFailure) and exc.code in AUTH_FAILURES:
        telemetry.record_database_error("credentials_refused")
        log.error("MongoDB refused the credentials (code %s)", exc.code)
        return database_unavailable()
    telemetry.record_database_error(type(exc).__name__)
    return problems.handle_unexpected(exc)


# --------------------------------------------------------------------------------------
# App factory
# --------------------------------------------------------------------------------------


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


def no_sniffing(response: Response) -> Response:
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


MODELS = docs.ApiModels(
    new_user=UserIn,
    changes=UserChanges,
    edit=UserEdit,
    user=User,
    page=UserPage,
    page_query=PageQuery,
    search_query=SearchQuery,
    health=Health,
)


def create_app(config: Settings | None = None) -> Flask:
    """The WSGI application. Without CONFIG, settings come from the environment."""
    settings = Settings.from_env() if config is None else config
    if not settings.api_keys and not settings.in_memory:
        raise ConfigError(
            "no API key: set API_KEYS_FILE to a file of key lines, NAME SCOPE sha256:HEX "
            "(`python usersapi_auth.py new NAME write` makes a key and its line; "
            "stack/swarm.sh secrets does it for the stack)"
        )
    telemetry.configure_logging(settings.log_level, settings.log_format)
    app = Flask(__name__)
    telemetry.init_app(app)  # first: the request id exists before any other hook runs
    app.before_request(start_database_deadline)
    app.teardown_request(end_database_deadline)
    app.after_request(no_sniffing)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_content_length
    app.extensions["usersapi.settings"] = settings
    app.extensions["usersapi.store"] = UserStore(settings)
    app.url_map.converters["userid"] = UserIdConverter
    app.register_blueprint(bp)
    app.register_blueprint(service)
    problems.init_app(app)
    app.register_error_handler(PyMongoError, handle_database_error)
    facts = docs.ApiFacts(settings.usersapi_version, settings.max_batch, FIELD_RULES)
    docs.init_app(app, MODELS, facts)
    # One reverse proxy (nginx) stands in front in production.
    app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1)  # type: ignore[method-assign]
    log.info("usersapi ready: %s", settings.describe())
    return app
