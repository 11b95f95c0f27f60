"""The `@request` decorator and the async request runner shared by both request plugins.

Creators write a small class whose decorated methods are the requests a project may send::

    from plugins.sprites.request_api import RequestError, request

    class Handlers:
        @request
        def add(self, a: int, b: int) -> int:
            return a + b

        @request(name="hello", allow_python_syntax=False, timeout=2)
        async def greet(self, who: str) -> str:
            if not who:
                raise RequestError("Tell me your name.")
            return f"Hello {who}!"

Arguments are converted to the parameters' `int` / `float` / `str` / `bool` annotations (see
`requests_grammar.convert_arguments`); unannotated parameters get the value as parsed. Results
become text by `format_result` (a declared return type is applied first). Sync handlers run in
a worker thread, async ones on the server's loop; both are cut off after their timeout.
`current_request()` tells a handler which connection and session asked.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import math
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .requests_grammar import (
    HANDLER_ERROR_REPLY,
    PYTHON_SYNTAX_ATTRIBUTE,
    SYNTAX_ERROR_REPLY,
    ParsedRequest,
    RequestError,
    RequestSyntaxError,
    convert_arguments,
    fits_int_limit,
    parse_requests,
    reply_for_exception,
    resolve_handler,
)

__all__ = [
    "HANDLER_ERROR_REPLY",
    "SYNTAX_ERROR_REPLY",
    "RequestContext",
    "RequestError",
    "RequestTimeout",
    "collect_handlers",
    "current_request",
    "format_result",
    "request",
]

REQUEST_ATTRIBUTE = "__stratus_request__"
DEFAULT_TIMEOUT = 10.0


@dataclass(frozen=True)
class RequestSpec:
    """Options given to `@request`."""

    name: str | None = None
    allow_python_syntax: bool = True
    timeout: float | None = None


def request(
    method: Callable | None = None,
    *,
    name: str | None = None,
    allow_python_syntax: bool = True,
    timeout: float | None = None,
) -> Any:
    """Mark a method as a request handler: `@request` or `@request(name=..., timeout=...)`.

    `name` is the request name the project sends (default: the method name);
    `allow_python_syntax` accepts the `name(1, x="y")` form (scratchcommunication only);
    `timeout` overrides the plugin's `handler_timeout` (seconds) for this handler.
    """

    def decorate(function: Callable) -> Callable:
        setattr(function, REQUEST_ATTRIBUTE, RequestSpec(name, allow_python_syntax, timeout))
        setattr(function, PYTHON_SYNTAX_ATTRIBUTE, allow_python_syntax)
        return function

    if method is not None:
        return decorate(method)
    return decorate


def collect_handlers(*owners: object) -> dict[str, Callable]:
    """{request name: bound method} of every `@request` method of the given objects."""
    handlers: dict[str, Callable] = {}
    for owner in owners:
        if owner is None:
            continue
        for attribute in dir(type(owner)):
            function = getattr(type(owner), attribute, None)
            spec = getattr(function, REQUEST_ATTRIBUTE, None)
            if not isinstance(spec, RequestSpec):
                continue
            request_name = spec.name or attribute
            if request_name in handlers:
                raise ValueError(f"two handlers for request {request_name!r}")
            handlers[request_name] = getattr(owner, attribute)
    return handlers


@dataclass(frozen=True)
class RequestContext:
    """Who sent the request being handled (the username is cosmetic and unauthenticated)."""

    client: Any
    room: str | None
    username: str | None
    session_id: str | None = None  # scratchcommunication client id; None for scratchattach
    request_id: str | None = None  # scratchattach request id


_CONTEXT: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "stratus_sprite_request", default=None
)


def current_request() -> RequestContext | None:
    """The context of the request being handled, inside a handler; None elsewhere."""
    return _CONTEXT.get()


class RequestTimeout(Exception):
    """A handler did not finish within its timeout."""


def format_number(value: float) -> str:
    """A number as Scratch shows it: 5.0 → "5", 0.1 → "0.1", inf → "Infinity"."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    return repr(value)


def _declared(value: Any, returns: Any) -> Any:
    origin = typing.get_origin(returns) or returns
    try:
        if origin in (list, tuple) and isinstance(value, list | tuple):
            return list(value)
        if origin is bool and not isinstance(value, str):
            return bool(value)
        if origin is int and isinstance(value, float) and value.is_integer():
            return int(value)
        if origin is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if origin is str and value is not None:
            return str(value)
    except (TypeError, ValueError, OverflowError):
        pass
    return value


def format_result(value: Any, returns: Any = None, *, lists: bool = False) -> Any:
    """A handler's result as reply text (or, with `lists`, a list of item texts).

    None → "" (scratchattach: no reply, handled by the caller); True/False → "true"/"false"
    as Scratch writes booleans; floats without a fraction lose their ".0"; lists and tuples are
    joined with spaces like Scratch's list reporter, unless `lists` keeps them as lists.
    """
    if returns is not None:
        value = _declared(value, returns)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return format_number(value)
    if isinstance(value, int) and not fits_int_limit(value):
        # Python will not write it in decimal; as a Scratch number it is Infinity anyway.
        return "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, list | tuple):
        items = [format_result(item) for item in value]
        return items if lists else " ".join(str(item) for item in items)
    return str(value)


def return_annotation(handler: Callable) -> Any:
    """The handler's declared return type, or None."""
    try:
        return typing.get_type_hints(handler).get("return")
    except Exception:
        return None


def handler_timeout(handler: Callable, default: float | None) -> float | None:
    """The timeout for one handler: its `@request(timeout=...)`, else the plugin default."""
    spec = getattr(handler, REQUEST_ATTRIBUTE, None)
    if isinstance(spec, RequestSpec) and spec.timeout is not None:
        return spec.timeout
    return default


async def call_with_timeout(
    handler: Callable, args: tuple, kwargs: Mapping[str, Any], timeout: float | None
) -> Any:
    """Run a sync handler in a worker thread or await an async one, within `timeout` seconds."""
    if inspect.iscoroutinefunction(handler):
        awaitable = handler(*args, **kwargs)
    else:
        # to_thread copies the context, so current_request() works in sync handlers too.
        awaitable = asyncio.to_thread(handler, *args, **kwargs)
    try:
        result = await asyncio.wait_for(awaitable, timeout)
    except TimeoutError:
        raise RequestTimeout(f"handler {getattr(handler, '__name__', handler)} timed out") from None
    if inspect.isawaitable(result):  # a sync function that returned a coroutine
        result = await asyncio.wait_for(result, timeout)
    return result


async def run_parsed(
    parsed: ParsedRequest, handlers: Mapping[str, Callable], timeout: float | None
) -> tuple[Any, Callable]:
    """Run one sub-request: (raw result, handler). Grammar and handler errors propagate."""
    handler = resolve_handler(parsed, handlers)
    bound = convert_arguments(handler, parsed)
    result = await call_with_timeout(
        handler, bound.args, bound.kwargs, handler_timeout(handler, timeout)
    )
    return result, handler


async def handle_text_request(
    text: str,
    handlers: Mapping[str, Callable],
    *,
    timeout: float | None = DEFAULT_TIMEOUT,
    context: RequestContext | None = None,
    on_error: Callable[[BaseException, str], None] | None = None,
) -> str:
    """scratchcommunication: parse and run a request message; always exactly one reply text.

    Sub-requests run in order; the reply is the last result or the first error's reply
    (`The command syntax was wrong.`, `Something went wrong.` or a `RequestError`'s text).
    """
    token = _CONTEXT.set(context)
    try:
        try:
            parsed = parse_requests(text)
        except Exception as error:  # a request always gets its one reply, even on a bug here
            if on_error is not None and not isinstance(error, RequestSyntaxError):
                on_error(error, "(parsing)")
            return SYNTAX_ERROR_REPLY
        reply = SYNTAX_ERROR_REPLY
        for sub_request in parsed:
            try:
                result, handler = await run_parsed(sub_request, handlers, timeout)
                reply = format_result(result, return_annotation(handler))
            except Exception as error:  # every failure becomes the one reply
                if on_error is not None and not isinstance(
                    error, RequestSyntaxError | RequestError
                ):
                    on_error(error, sub_request.name)
                return reply_for_exception(error)
        return reply
    finally:
        _CONTEXT.reset(token)


async def run_named_request(
    name: str,
    arguments: tuple[str, ...],
    handlers: Mapping[str, Callable],
    *,
    timeout: float | None = DEFAULT_TIMEOUT,
    context: RequestContext | None = None,
) -> tuple[Any, Callable]:
    """scratchattach: run handler `name` with string arguments (converted to annotations)."""
    token = _CONTEXT.set(context)
    try:
        parsed = ParsedRequest(name, tuple(arguments), {}, arg_texts=tuple(arguments))
        return await run_parsed(parsed, handlers, timeout)
    finally:
        _CONTEXT.reset(token)
