"""Everything a plugin imports, in one place: `from plugins.api import Plugin, on_command, ...`.

The core's plugin registry (`server.plugins`) holds the protocol-neutral parts; CL4's command
requests and status codes come from `protocols.cl4.plugins`. See docs/plugins.md.
"""

from protocols.cl4.codes import Status, StatusCode
from protocols.cl4.plugins import CommandRequest, custom_status
from server.codes import CloseCode
from server.facade import Facade
from server.plugins import (
    DROP,
    Client,
    Plugin,
    Refuse,
    VariableWrite,
    before_command,
    import_object,
    on_command,
    on_connect,
    on_disconnect,
    on_handshake,
    on_variable,
    printable,
)

__all__ = [
    "DROP",
    "Client",
    "CloseCode",
    "CommandRequest",
    "Facade",
    "Plugin",
    "Refuse",
    "Status",
    "StatusCode",
    "VariableWrite",
    "before_command",
    "custom_status",
    "import_object",
    "on_command",
    "on_connect",
    "on_disconnect",
    "on_handshake",
    "on_variable",
    "printable",
]
