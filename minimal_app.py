"""The smallest Flask + pymongo app that answers what the users API answers for a read by id,
a page, a search and a single create: one query (a count and a find for a page),
``json.dumps``, nothing else (no validation, logs, metrics, ETags or error documents).

It is the reference of benchmark.py's CPU comparison, served by gunicorn with the same
gunicorn.conf.py as the API: ``gunicorn -c gunicorn.conf.py 'minimal_app:create_app()'``
with MONGO_URI (and MONGO_DB, MONGO_POOL_SIZE) set. Not part of the image.
"""

from __future__ import annotations

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


def create_app() -> Flask:
    app = Flask(__name__)
    pool_size = int(os.environ.get("MONGO_POOL_SIZE", "10"))
    client: MongoClient[Document] = MongoClient(os.environ["MONGO_URI"], maxPoolSize=pool_size)
    users = client[os.environ.get("MONGO_DB", "usersdb")]["users"]

    @app.get("/users/<user_id>")
    def get_user(user_id: str) -> Response:
        return answer(users.find_one({"_id": ObjectId(user_id)}))

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
