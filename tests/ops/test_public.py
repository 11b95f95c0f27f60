"""The public read API (ops/public.py) through real HTTP on 127.0.0.1."""

from __future__ import annotations

from urllib.parse import quote

from tests.conformance.helpers import joined, recv, set_text
from tests.ops.api import TOKEN, call

SCORE = "☁ score"


def variables_path(room: str) -> str:
    return f"/api/v1/projects/{quote(room, safe='')}/variables"


def test_off_by_default(server, room):
    """Without [http] public_variables the route does not exist (404)."""
    assert call(server.port, "GET", variables_path(room), token=None).status == 404


async def test_variables_are_readable_by_any_page(make_server, room):
    """A project's variables come back name to value, with CORS allowed for any origin."""
    srv = make_server(http={"public_variables": True}, store={"backend": "memory"})
    ws = await joined(srv.url, room)
    try:
        await ws.send(set_text(SCORE, "42"))
        await ws.send(set_text("☁ other", 7))
        peer = await joined(srv.url, room)
        await recv(peer)  # the dump: both values are in the room
        reply = call(srv.port, "GET", variables_path(room), token=None,
                     headers={"Origin": "https://example.org"})
        assert reply.status == 200 and reply.json == {SCORE: "42", "☁ other": 7}
        assert reply.headers["access-control-allow-origin"] == "*"
        assert reply.headers["content-type"] == "application/json"
        await peer.close()
    finally:
        await ws.close()


def test_cors_preflight_is_answered(make_server, room):
    """OPTIONS (a browser's preflight) gets 204 with the CORS headers."""
    srv = make_server(http={"public_variables": True}, store={"backend": "memory"})
    reply = call(srv.port, "OPTIONS", variables_path(room), token=None,
                 headers={"Origin": "https://example.org",
                          "Access-Control-Request-Method": "GET"})
    assert reply.status == 204
    assert reply.headers["access-control-allow-origin"] == "*"
    assert "GET" in reply.headers["access-control-allow-methods"]
    post = call(srv.port, "POST", variables_path(room), token=None)
    assert post.status == 405 and post.headers["access-control-allow-origin"] == "*"


def test_stored_room_is_read_without_being_created(make_server, room):
    """After a restart a stored room is read from the store; it does not enter memory, and an
    unknown project answers {} without creating a room either."""
    srv = make_server(http={"public_variables": True}, admin={"token": TOKEN})
    path = f"/api/v1/rooms/scratch/{room}/variables/{quote(SCORE, safe='')}"
    assert call(srv.port, "PUT", path, {"value": "42"}).status == 200
    srv.restart()
    assert call(srv.port, "GET", variables_path(room), token=None).json == {SCORE: "42"}
    assert call(srv.port, "GET", variables_path(room + "-none"), token=None).json == {}
    assert call(srv.port, "GET", "/api/v1/rooms").json["total"] == 0


def test_bad_and_blocked_projects(make_server, room):
    """An overlong id is 400; a blocked project's variables are 404 (disabled)."""
    srv = make_server(http={"public_variables": True}, admin={"token": TOKEN},
                      store={"backend": "memory"})
    assert call(srv.port, "GET", variables_path("1" * 1000), token=None).status == 400
    assert call(srv.port, "PUT", f"/api/v1/blocked-projects/{room}").status == 200
    reply = call(srv.port, "GET", variables_path(room), token=None)
    assert reply.status == 404 and "disabled" in reply.json["error"]


def test_projects_blocked_in_config_are_hidden(make_server):
    """A project listed in [scratch] blocked_rooms answers 404 like a runtime block."""
    srv = make_server(http={"public_variables": True}, scratch={"blocked_rooms": ["666"]},
                      store={"backend": "memory"})
    assert call(srv.port, "GET", variables_path("666"), token=None).status == 404
    assert call(srv.port, "GET", variables_path("667"), token=None).json == {}
