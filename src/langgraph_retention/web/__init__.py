"""The HTTP API: the seed's cleanup endpoints, made safe (auth, validation, jobs, health,
metrics, OpenAPI). `make_blueprint` (Flask) and `make_router` (FastAPI) import their
framework only when used, so the core needs neither."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .core import Api
from .http import Request, Response
from .jobs import Job, Jobs

if TYPE_CHECKING:
    from .fastapi import make_router
    from .flask import make_app, make_blueprint

__all__ = ["Api", "Job", "Jobs", "Request", "Response", "make_app", "make_blueprint", "make_router"]


def __getattr__(name: str) -> Any:
    if name in ("make_blueprint", "make_app"):
        from . import flask

        return getattr(flask, name)
    if name == "make_router":
        from . import fastapi

        return fastapi.make_router
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
