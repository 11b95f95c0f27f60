"""The public read API: GET /api/v1/projects/{id}/variables, opt-in ([http] public_variables).

Any web page may read a project's cloud variables as one JSON object, name to value
({"☁ score": "42"}), with CORS allowed (Access-Control-Allow-Origin: *, preflight answered).
A room in memory is read there; one that is not is read from the store off the event loop and
is not created in memory. Unknown projects answer {}; blocked ones (at run time or by
[scratch] blocked_rooms) 404, as their variables are disabled. Writes are not offered here
(the admin API has them, behind its token).
"""

from __future__ import annotations

from typing import Any

from websockets.http11 import Response

from server.routes import HttpRequest, error_response, json_response

PATH = "/api/v1/projects/{id}/variables"
NAMESPACE = "scratch"


class PublicVariables:
    """The public read API as a server component (registers its route when enabled)."""

    name = "public-variables"

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.facade: Any = None

    def install(self, server: Any) -> None:
        """Register the route (nothing when [http] public_variables is false)."""
        if not self.enabled:
            return
        self.facade = server.facade
        self.facade.on_http(PATH, self.variables, ("GET",), cors=True)

    async def start(self, server: Any) -> None:
        """Nothing to open."""

    async def stop(self) -> None:
        """Nothing to close."""

    async def variables(self, request: HttpRequest) -> Response:
        """A project's variables, name to value."""
        room_id = request.params["id"]
        try:
            scratch = self.facade.service(NAMESPACE)
        except LookupError:
            return error_response(404, "Not Found", "the Scratch protocol is not running")
        if not scratch.valid_room_id(room_id):
            return error_response(400, "Bad Request", "invalid project id")
        if scratch.blocked_by_config(room_id) or self.facade.is_blocked(NAMESPACE, room_id):
            return error_response(404, "Not Found", "cloud variables are disabled for this project")
        variables = await self.facade.read_variables(NAMESPACE, room_id)
        return json_response(200, "OK", variables or {})
