"""docs/openapi.json documents every route the API serves, and no route it does not serve."""

from __future__ import annotations

import json

from aiohttp import web

from bridge.http_api import OPENAPI
from bridge.http_api import add_routes as add_api_routes
from bridge.http_mail import add_routes as add_mail_routes
from bridge.http_push import add_routes as add_push_routes


def test_every_route_is_documented() -> None:
    app = web.Application()
    add_api_routes(app)
    add_mail_routes(app)
    add_push_routes(app)
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD" and route.resource.canonical != "/api/docs"
    }
    served.add(("get", "/metrics"))  # added by create_app itself
    doc = json.loads(OPENAPI.read_text())
    documented = {(method, path) for path, item in doc["paths"].items() for method in item}
    assert served == documented


def test_query_parameters_of_the_new_routes_are_documented() -> None:
    doc = json.loads(OPENAPI.read_text())

    def names(path: str, method: str) -> set[str]:
        return {p["name"] for p in doc["paths"][path][method].get("parameters", [])}

    assert "remoteImages" in names("/api/v1/email/{id}", "get")
    assert {"q", "account", "limit"} <= names("/api/v1/contacts", "get")
    assert {"account", "filename"} <= names("/api/v1/uploads", "post")
