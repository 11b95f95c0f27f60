"""The HTTP route table on its own (server.routes): templates, methods, 404/405, HEAD, OPTIONS,
CORS, path tricks and handlers that answer later."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.datastructures import Headers

from server.http import plain_response
from server.routes import TEXT, HttpRequest, RouteTable, json_bytes, json_response, split_path


def request(path: str, method: str = "GET", body: bytes = b"") -> HttpRequest:
    return HttpRequest(path, Headers(), method, body=body, address="192.0.2.1")


def ok(text: str = "ok"):
    return lambda req: plain_response(200, "OK", f"{text}\n".encode(), TEXT)


def table() -> RouteTable:
    routes = RouteTable()
    routes.add("/healthz", ok())
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


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_other_methods_are_405_with_allow(method):
    """A method the path does not serve answers 405 with the methods it does serve."""
    response = table().respond(request("/healthz", method))
    assert response.status_code == 405
    assert response.headers["Allow"] == "GET, HEAD, OPTIONS"


def test_allow_lists_every_route_of_the_path():
    """When several routes share a template, 405's Allow names all their methods."""
    routes = RouteTable()
    routes.add("/things/{id}", ok(), ("GET",))
    routes.add("/things/{id}", ok(), ("DELETE",))
    response = routes.respond(request("/things/1", "POST"))
    assert response.headers["Allow"] == "GET, HEAD, DELETE, OPTIONS"
    assert routes.respond(request("/things/1", "DELETE")).status_code == 200


def test_head_has_get_headers_and_no_body():
    """HEAD answers with the GET response's status and headers but no body."""
    response = table().respond(request("/healthz", "HEAD"))
    assert response.status_code == 200 and response.body == b""
    assert response.headers["Content-Length"] == "3"
    missing = table().respond(request("/nope", "HEAD"))
    assert missing.status_code == 404 and missing.body == b""


def test_path_parameters_are_decoded_segments():
    """{name} takes one whole segment, percent-decoded, so %2F is part of the value."""
    routes = RouteTable()
    seen = []
    routes.add("/rooms/{protocol}/{id}",
               lambda req: seen.append(dict(req.params)) or ok()(req))
    assert routes.respond(request("/rooms/scratch/a%2Fb%20c")).status_code == 200
    assert seen == [{"protocol": "scratch", "id": "a/b c"}]
    assert routes.respond(request("/rooms/scratch")).status_code == 404
    assert routes.respond(request("/rooms/scratch/1/extra")).status_code == 404
    assert routes.respond(request("/rooms//1")).status_code == 404  # an empty parameter


def test_literal_segments_win_by_order():
    """Routes are tried in order: an earlier literal route takes its path first."""
    routes = RouteTable()
    routes.add("/a/special", ok("special"))
    routes.add("/a/{name}", ok("any"))
    assert routes.respond(request("/a/special")).body == b"special\n"
    assert routes.respond(request("/a/other")).body == b"any\n"


@pytest.mark.parametrize("path", ["/rooms/scratch/..", "/rooms/scratch/%2e%2E", "/rooms/./x",
                                  "/rooms/scratch/%ff", "/rooms/scratch/%C3"])
def test_dot_segments_and_bad_encoding_are_400(path):
    """Dot segments (plain or encoded) and invalid UTF-8 are refused, never resolved."""
    routes = RouteTable()
    routes.add("/rooms/{protocol}/{id}", ok())
    response = routes.respond(request(path))
    assert response.status_code == 400


def test_split_path_keeps_odd_percent_signs():
    """A percent sign that starts no escape stays as it is."""
    assert split_path("/a/100%/x%zz") == ["a", "100%", "x%zz"]


def test_handler_gets_body_and_json():
    """A handler reads the body; request.json() parses it or explains why not."""
    routes = RouteTable()
    routes.add("/echo", lambda req: json_response(200, "OK", req.json()), ("POST",))
    response = routes.respond(request("/echo", "POST", b'{"value": "42"}'))
    assert response.body == b'{"value":"42"}\n'
    with pytest.raises(ValueError, match="not JSON"):
        request("/echo", "POST", b"{nope").json()
    with pytest.raises(ValueError, match="not UTF-8"):
        request("/echo", "POST", b"\xff").json()


def test_options_answers_allow_and_cors_preflight():
    """OPTIONS gets 204 with Allow; on a CORS route also the preflight headers."""
    routes = table()
    routes.add("/public", ok(), cors=True)
    plain = routes.respond(request("/healthz", "OPTIONS"))
    assert plain.status_code == 204 and plain.headers["Allow"] == "GET, HEAD, OPTIONS"
    assert "Access-Control-Allow-Origin" not in plain.headers
    assert "Content-Length" not in plain.headers
    preflight = routes.respond(request("/public", "OPTIONS"))
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    assert preflight.headers["Access-Control-Allow-Methods"] == "GET, HEAD, OPTIONS"
    assert int(preflight.headers["Access-Control-Max-Age"]) > 0
    assert routes.respond(request("/public")).headers["Access-Control-Allow-Origin"] == "*"


async def test_awaitable_handlers_are_finished_like_others():
    """A handler returning an awaitable gets CORS and HEAD handling once it completes."""
    routes = RouteTable()

    async def later(req):
        await asyncio.sleep(0)
        return plain_response(200, "OK", b"later\n", TEXT)

    routes.add("/later", later, cors=True)
    response = await routes.respond(request("/later", "HEAD"))
    assert response.status_code == 200 and response.body == b""
    assert response.headers["Access-Control-Allow-Origin"] == "*"


async def test_failing_handler_is_500_not_a_crash(caplog):
    """A handler that raises, now or later, answers 500 and logs which route failed."""
    routes = RouteTable()

    async def broken_later(req):
        raise RuntimeError("later")

    routes.add("/now", lambda req: 1 / 0)
    routes.add("/later", broken_later)
    assert routes.respond(request("/now")).status_code == 500
    assert (await routes.respond(request("/later"))).status_code == 500
    assert "/now" in caplog.text and "/later" in caplog.text


def test_wants_body_only_for_served_methods():
    """wants_body is true only where a handler serves that method (worth a 100 Continue)."""
    routes = RouteTable()
    routes.add("/things/{id}", ok(), ("PUT",))
    assert routes.wants_body("PUT", "/things/1?x")
    assert not routes.wants_body("POST", "/things/1")
    assert not routes.wants_body("PUT", "/nope")
    assert not routes.wants_body("PUT", "/things/..")


def test_templates_are_checked_and_registered_once():
    """Templates start with "/", parameters are whole segments, a method is registered once."""
    routes = table()
    assert routes.respond(request("/healthz/")).status_code == 404
    assert routes.paths() == ["/healthz"]
    with pytest.raises(ValueError):
        routes.add("/healthz", ok())
    routes.add("/healthz", ok(), ("POST",))  # another method of the same path is fine
    with pytest.raises(ValueError):
        routes.add("status", ok())
    with pytest.raises(ValueError):
        routes.add("/a/x{id}", ok())
    with pytest.raises(ValueError):
        routes.add("/a", ok(), ("OPTIONS",))


def test_json_answers_keep_lone_surrogates_as_escapes():
    """Client text with a lone surrogate (JSON "\\ud800" from a client) is answered as valid
    UTF-8 JSON that decodes back to the same text."""
    body = json_bytes({"room": "a\ud800b", "name": "☁ x"})
    assert json.loads(body.decode("utf-8")) == {"room": "a\ud800b", "name": "☁ x"}
