"""The HTTP route table on its own (server.routes): exact paths, 404, 405, HEAD and handlers
that answer later."""

from __future__ import annotations

import asyncio

import pytest
from websockets.datastructures import Headers
from websockets.http11 import Request

from server.http import plain_response
from server.routes import TEXT, RouteTable


def request(path: str, method: str = "GET") -> Request:
    return Request(path, Headers(), method)


def table() -> RouteTable:
    routes = RouteTable()
    routes.add("/healthz", lambda req: plain_response(200, "OK", b"ok\n", TEXT))
    return routes


def test_registered_path_is_served_and_query_ignored():
    """GET of a registered path answers with its handler, whatever the query string."""
    routes = table()
    for path in ("/healthz", "/healthz?x=1"):
        response = routes.respond(request(path))
        assert (response.status_code, response.body) == (200, b"ok\n")


def test_unknown_path_is_404():
    """A path nobody registered answers 404 with a short text body."""
    response = table().respond(request("/nope"))
    assert response.status_code == 404
    assert b"cloud-variable server" in response.body
    assert response.headers["Content-Type"] == TEXT


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS"])
def test_other_methods_are_405_with_allow(method):
    """Methods other than GET and HEAD answer 405 with Allow: GET, HEAD, on any path."""
    for path in ("/healthz", "/nope"):
        response = table().respond(request(path, method))
        assert response.status_code == 405
        assert response.headers["Allow"] == "GET, HEAD"


def test_head_has_get_headers_and_no_body():
    """HEAD answers with the GET response's status and headers but no body."""
    response = table().respond(request("/healthz", "HEAD"))
    assert response.status_code == 200 and response.body == b""
    assert response.headers["Content-Length"] == "3"
    missing = table().respond(request("/nope", "HEAD"))
    assert missing.status_code == 404 and missing.body == b""


def test_paths_are_exact_and_registered_once():
    """Routes match exactly, must start with "/" and cannot be registered twice."""
    routes = table()
    assert routes.respond(request("/healthz/")).status_code == 404
    assert routes.paths() == ["/healthz"]
    with pytest.raises(ValueError):
        routes.add("/healthz", lambda req: None)
    with pytest.raises(ValueError):
        routes.add("status", lambda req: None)


async def test_a_handler_may_answer_later():
    """A handler's awaitable answer is passed on; for HEAD it loses its body."""
    async def later(req):
        await asyncio.sleep(0)
        return plain_response(200, "OK", b"computed\n", TEXT)

    routes = RouteTable()
    routes.add("/later", later)
    got = await routes.respond(request("/later"))
    assert (got.status_code, got.body) == (200, b"computed\n")
    head = await routes.respond(request("/later", "HEAD"))
    assert (head.status_code, head.body, head.headers["Content-Length"]) == (200, b"", "9")
