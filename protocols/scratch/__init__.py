"""The Scratch / TurboWarp cloud-variable protocol: wire format, options, engine, component."""

from .component import ScratchProtocol
from .engine import (
    COOKIE_WARNING,
    GENERIC_ERROR,
    IDENTIFY,
    OVERLOADED,
    PROJECT_UNAVAILABLE,
    ROOM_FULL,
    SECURITY,
    SERVER_ERROR,
    USERNAME_ERROR,
    ScratchSession,
    accepts_name,
    apply_variable_hooks,
    connect_refusal,
)
from .options import ScratchOptions, ScratchSection
from .wire import (
    CLOUD_PREFIXES,
    CODEC,
    NAMESPACE,
    encode_set,
    encode_value,
    key_to_name,
    variable_key,
)

__all__ = [
    "CLOUD_PREFIXES",
    "CODEC",
    "COOKIE_WARNING",
    "GENERIC_ERROR",
    "IDENTIFY",
    "NAMESPACE",
    "OVERLOADED",
    "PROJECT_UNAVAILABLE",
    "ROOM_FULL",
    "SECURITY",
    "SERVER_ERROR",
    "USERNAME_ERROR",
    "ScratchOptions",
    "ScratchProtocol",
    "ScratchSection",
    "ScratchSession",
    "accepts_name",
    "apply_variable_hooks",
    "connect_refusal",
    "encode_set",
    "encode_value",
    "key_to_name",
    "variable_key",
]
