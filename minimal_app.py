"""The apps benchmark.py compares the users API with; none of them is part of the image.

``create_app()``, the minimal app: the smallest Flask + pymongo app that answers what the
users API answers for a read by id, a page, a search and a single create: one query (a
count and a find for a page), ``json.dumps``, nothing else (no validation, logs, metrics,
ETags or error documents). A read by id is one ``find_one`` by ObjectId and the user's id,
name, email and username. Served by gunicorn with gunicorn.conf.py as the API, it measures
what the API's own code costs; served by ``gunicorn -w 2`` alone, it is the bare reference.

``create_eve_app()``: the same users served by Eve, the Flask + MongoDB REST framework, with
its defaults (HATEOAS links, ETags, Last-Modified, pagination with a total), a schema like
the API's and a unique email. Eve is installed by the bench environment only.

Both read MONGO_URI, MONGO_DB and MONGO_POOL_SIZE.
"""

from __future__ import annotations

import importlib
import json
import os
import re
from datetime import UTC, datetime
from typing import Any

from bson import ObjectId
from flask import Flask, Response, request
from pymongo import ASCENDING, MongoClient
from pymongo.collection import Collection

Document = dict[str, Any]


def answer(payload: object, status: int = 200) -> Response:
    return Response(json.dumps(payload, default=str), status, mimetype="application/json")


def page(users: Collection[Document], query: Document) -> Response:
    limit = int(request.args.get("limit", "50"))
    offset = int(request.args.get("offset", "0"))
    total = users.count_documents(query)
    items = list(users.find(query).sort("_id", ASCENDING).skip(offset).limit(limit))
    return answer({"items": items, "total": total, "limit": limit, "offset": offset})


def pool_size() -> int:
    return int(os.environ.get("MONGO_POOL_SIZE", "10"))


def database_name() -> str:
    return os.environ.get("MONGO_DB", "usersdb")


def create_app() -> Flask:
    app = Flask(__name__)
    client: MongoClient[Document] = MongoClient(os.environ["MONGO_URI"], maxPoolSize=pool_size())
    users = client[database_name()]["users"]

    @app.get("/users/<user_id>")
    def get_user(user_id: str) -> Response:
        doc = users.find_one({"_id": ObjectId(user_id)})
        if doc is None:
            return answer({"error": "not found"}, 404)
        fields = {"id": str(doc["_id"])} | {k: doc[k] for k in ("name", "email", "username")}
        return answer(fields)

    @app.get("/users")
    def list_users() -> Response:
        return page(users, {})

    @app.get("/users/search")
    def search_users() -> Response:
        pattern = {"$regex": re.escape(request.args["q"]), "$options": "i"}
        return page(users, {"$or": [{"name": pattern}, {"email": pattern}, {"username": pattern}]})

    @app.post("/users")
    def create_user() -> Response:
        moment = datetime.now(UTC)
        doc = {**request.get_json(), "version": 1, "created_at": moment, "updated_at": moment}
        users.insert_one(doc)
        return answer(doc, 201)

    return app


EVE_USER_SCHEMA = {
    "name": {"type": "string", "required": True, "minlength": 1, "maxlength": 100},
    "email": {"type": "string", "required": True, "unique": True, "regex": r"^[^@\s]+@[^@\s]+$"},
    "username": {"type": "string", "required": True, "regex": r"^[A-Za-z0-9._-]{3,30}$"},
}


def create_eve_app() -> Flask:
    # Imported by name: the API's environments (and so mypy) do not have Eve.
    eve = importlib.import_module("eve")
    settings = {
        "MONGO_URI": os.environ["MONGO_URI"],
        "MONGO_DBNAME": database_name(),
        "MONGO_OPTIONS": {"maxPoolSize": pool_size()},
        # A search is a case-insensitive regular expression in ?where=, as the API's.
        "MONGO_QUERY_BLACKLIST": ["$where"],
        "DOMAIN": {
            "users": {
                "resource_methods": ["GET", "POST"],
                "item_methods": ["GET"],
                "schema": EVE_USER_SCHEMA,
            }
        },
    }
    app: Flask = eve.Eve(settings=settings)
    return app
