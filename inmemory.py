"""The in-memory store of the development server and the tests: mongomock, fitted to the
current pymongo and to MongoDB's atomic writes. Never used in production (the image does
not install mongomock); ``usersapi`` imports it only for ``MONGO_URI=mongomock://``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import mongomock
from mongomock.collection import BulkOperationBuilder
from mongomock.collection import Collection as MongomockCollection

_fitting = threading.Lock()
_fitted = False
_write_lock = threading.RLock()


def without_sort(add_update: Callable[..., Any]) -> Callable[..., Any]:
    # Since pymongo 4.10, UpdateOne hands the bulk builder a sort= argument that mongomock
    # 4.3's add_update does not take. The API never sorts an update; a real sort is refused.
    def add_update_without_sort(self: Any, *args: Any, sort: Any = None, **kwargs: Any) -> Any:
        if sort is not None:
            raise NotImplementedError("mongomock cannot sort a bulk update")
        return add_update(self, *args, **kwargs)

    return add_update_without_sort


def atomic(write: Callable[..., Any]) -> Callable[..., Any]:
    # MongoDB applies each write to a document atomically; mongomock reads, changes and
    # stores it in Python, where two threads could interleave.
    def locked(*args: Any, **kwargs: Any) -> Any:
        with _write_lock:
            return write(*args, **kwargs)

    return locked


def fit_mongomock() -> None:
    """Apply both fittings to mongomock's classes, once per process."""
    global _fitted  # noqa: PLW0603 - mongomock's classes are fitted once per process
    with _fitting:
        if _fitted:
            return
        setattr(BulkOperationBuilder, "add_update", without_sort(BulkOperationBuilder.add_update))  # noqa: B010
        for name in ("_insert", "_update", "_delete", "_find_and_modify"):
            setattr(MongomockCollection, name, atomic(getattr(MongomockCollection, name)))
        _fitted = True


def in_memory_client() -> Any:
    """A new in-memory MongoDB client with timezone-aware datetimes, as the API's own."""
    fit_mongomock()
    return mongomock.MongoClient(tz_aware=True)
