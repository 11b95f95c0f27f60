"""The reader for requests the fast path defers (server/request.py), without sockets."""

from __future__ import annotations

from http import HTTPStatus

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.request import MAX_BODY_BYTES, MAX_REQUEST_BYTES, RequestError, RequestReader

GET = b"GET /healthz?x=1 HTTP/1.1\r\nHost: a\r\nUser-Agent: caf\xe9\r\n\r\n"


def read(data: bytes, pieces: int = 1, max_bytes: int = MAX_REQUEST_BYTES,
         max_body_bytes: int = MAX_BODY_BYTES):
    """Feed `data` in `pieces` reads; the reader and what it returned last."""
    reader = RequestReader(max_bytes, max_body_bytes)
    step = max(1, -(-len(data) // pieces))
    result = None
    for start in range(0, len(data), step):
        result = reader.receive_data(data[start:start + step])
        if result is not None:
            break
    return reader, result


def status_of(data: bytes, pieces: int = 1, max_bytes: int = MAX_REQUEST_BYTES,
              max_body_bytes: int = MAX_BODY_BYTES):
    with pytest.raises(RequestError) as caught:
        read(data, pieces, max_bytes, max_body_bytes)
    return caught.value.status


@pytest.mark.parametrize("pieces", [1, 2, len(GET)])
def test_a_request_is_read_however_it_is_split(pieces):
    """The request comes out whole, in websockets' form, whatever the reads."""
    reader, request = read(GET, pieces)
    assert (request.method, request.path, request.protocol) == ("GET", "/healthz?x=1", "HTTP/1.1")
    assert list(request.headers.raw_items()) == [("Host", "a"), ("User-Agent", "caf\xe9")]
    assert not reader.has_body and reader.leftover == b""


def test_incomplete_request_waits():
    """Until the blank line arrives the reader asks for more."""
    assert read(GET[:-2])[1] is None


def test_bytes_after_the_request_are_left_over():
    """Bytes after the request (frames after an upgrade) are handed back untouched."""
    reader, request = read(GET + b"\x81\x80rest", 2)
    assert request is not None and reader.leftover == b"\x81\x80rest"


def test_body_is_read_and_kept():
    """A body is kept for the handler, and the request is returned after it."""
    head = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n"
    reader = RequestReader()
    assert reader.receive_data(head) is None
    assert reader.receive_data(b"hel") is None
    request = reader.receive_data(b"lo" + b"after")
    assert request.method == "POST" and reader.has_body and reader.body_bytes == 5
    assert reader.body == b"hello" and reader.leftover == b"after"


def test_chunked_body_is_joined():
    """A chunked body reaches the handler as one byte string, however it was chunked."""
    reader, request = read(b"PUT /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n", 3)
    assert request.method == "PUT" and reader.body == b'{"a":1}'


def test_body_sent_after_100_continue_is_read():
    """After the head of a request waiting for 100 Continue, the body is read when it comes."""
    reader = RequestReader()
    head = (b"PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n"
            b"Expect: 100-continue\r\n\r\n")
    assert reader.receive_data(head) is not None and not reader.complete
    reader.continued = True
    assert reader.receive_data(b"bo") is None
    assert reader.receive_data(b"dy") is not None
    assert reader.complete and reader.body == b"body"


def test_waiting_for_100_continue_returns_at_the_head():
    """A client expecting 100 Continue gets its request returned before any body."""
    reader, request = read(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9\r\n"
                           b"Expect: 100-continue\r\n\r\n")
    assert request is not None and reader.has_body


def test_expect_100_continue_without_a_body_reads_to_the_end():
    """Expect: 100-continue on a request without a body changes nothing: it is read whole."""
    reader, request = read(b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\nframes")
    assert request is not None and reader.complete and reader.leftover == b"frames"


@pytest.mark.parametrize("pieces", [1, 3, 50])
def test_head_limit_is_exact(pieces):
    """A head of exactly the limit is read; one byte more is 431, however it is split."""
    limit = 1000
    start = b"GET / HTTP/1.1\r\nHost: a\r\nX: "
    head = start + b"v" * (limit - len(start) - 4) + b"\r\n\r\n"
    assert len(head) == limit
    assert read(head + b"next", pieces, limit)[1] is not None
    longer = head.replace(b"X: ", b"X: v")
    assert status_of(longer, pieces, limit) == HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE


def test_head_that_fills_the_limit_and_goes_on_is_431():
    """A read that leaves the unfinished head exactly at the limit, then one more byte: 431."""
    reader = RequestReader(100)
    assert reader.receive_data(b"GET / HTTP/1.1\r\nX: " + b"v" * 81) is None
    with pytest.raises(RequestError) as caught:
        reader.receive_data(b"v")
    assert caught.value.status == HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE


def test_body_limit_is_exact():
    """A body of exactly the limit is read; a longer one is 413, announced or chunked."""
    limit = 1000
    head = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n"
    assert read(head % limit + b"b" * limit, 3, max_body_bytes=limit)[1] is not None
    assert status_of(head % (limit + 1), 1, max_body_bytes=limit) == (
        HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
    chunked = (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
               + (b"64\r\n" + b"c" * 100 + b"\r\n") * 11 + b"0\r\n\r\n")
    assert status_of(chunked, 4, max_body_bytes=limit) == HTTPStatus.REQUEST_ENTITY_TOO_LARGE


def test_body_limit_is_its_own():
    """The body limit does not depend on the head limit: a small head may carry a large body."""
    body = b"b" * 5000
    request = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n" + body
    reader, result = read(request, 2, max_bytes=1000, max_body_bytes=5000)
    assert result is not None and reader.body == body


@pytest.mark.parametrize("data, status", [
    (b"\x16\x03\x01\x00", HTTPStatus.BAD_REQUEST),  # a TLS hello: refused on its first byte
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: \x07\r\n\r\n", HTTPStatus.BAD_REQUEST),
    (b"GET / HTTP/3.0\r\nHost: a\r\n\r\n", HTTPStatus.HTTP_VERSION_NOT_SUPPORTED),
    (b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: br\r\n\r\n", HTTPStatus.NOT_IMPLEMENTED),
])
def test_errors_carry_their_status(data, status):
    """Each kind of unreadable request raises the status it should be answered with."""
    assert status_of(data) == status


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=400), st.integers(1, 4))
def test_any_bytes_give_a_request_an_error_or_a_wait(data, pieces):
    """Any bytes end in a request, a RequestError or a wait for more, never another exception."""
    try:
        reader, request = read(data, pieces)
    except RequestError as error:
        assert 400 <= error.status < 600
    else:
        if request is not None:
            assert reader.body_bytes <= MAX_BODY_BYTES
