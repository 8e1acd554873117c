"""Serving: the HTTP app, A/B routing, shadow scoring, and the prediction log.

``app`` assembles a server (``create_app``, ``serve``) from ``schema`` (the /predict body),
``server`` (models, scoring, log rows, alias following) and ``endpoints`` (the FastAPI routes,
imported only when an app is built). Every answer is logged (``predlog``) before it is sent.
``score`` turns rows into the answers the server gives; it lives with safe loading in
:mod:`mlkit.registry.loading`, so evaluation and monitoring use it without importing the HTTP app.
"""

from mlkit.registry.loading import score
from mlkit.registry.store import parse_target
from mlkit.serve.app import ENV_TOKEN, Server, create_app, serve
from mlkit.serve.routing import Variant, bucket, parse_ab, route

__all__ = [
    "ENV_TOKEN",
    "Server",
    "Variant",
    "bucket",
    "create_app",
    "parse_ab",
    "parse_target",
    "route",
    "score",
    "serve",
]
