# -*- test-case-name: test.test_vhost_httphead -*-
"""The sans-io HTTP head and body-framing parsers (nps.protocols.httphead), fuzzed with hypothesis."""
from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from nps.protocols.httphead import (
    BodyReader,
    HeadReader,
    HttpError,
    parse_request_head,
    parse_response_head,
    request_body,
    response_body,
)


def test_request_head_split_anywhere() -> None:
    """A head arrives in pieces; the reader returns it once, the rest stays for the body."""
    raw = b"\r\nPOST /a/b?q=1 HTTP/1.1\r\nHost: a.com\r\nContent-Length: 5\r\nX-A:  v \r\n\r\nhello"
    for cut in range(1, len(raw)):
        reader = HeadReader()
        head = reader.feed(raw[:cut])
        if head is None:
            head = reader.feed(raw[cut:])
            rest = reader.take_rest()
        else:
            rest = reader.take_rest() + raw[cut:]
        assert head is not None
        assert rest == b"hello"
        request = parse_request_head(head)
        assert (request.method, request.target, request.path) == (b"POST", b"/a/b?q=1", b"/a/b")
        assert request.get(b"x-a") == b"v"
        assert request_body(request).remaining == 5


def test_request_framing_rules() -> None:
    """Keep-alive, upgrade and body framing follow RFC 9112; smuggling shapes are refused."""
    def req(text: bytes) -> object:
        return parse_request_head(text + b"\r\n\r\n")

    r = parse_request_head(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert r.keep_alive and not parse_request_head(b"GET / HTTP/1.0\r\n\r\n").keep_alive
    r = parse_request_head(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: ws\r\n\r\n")
    assert r.upgrade and r.keep_alive
    assert request_body(parse_request_head(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
                        ).kind == "chunked"
    bad = [
        (b"GET / HTTP/1.1", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX : y", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b", 400),
        (b"GET  / HTTP/1.1\r\nHost: a", 400),
        (b"GET / HTTP/3.0\r\nHost: a", 505),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip", 501),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 1", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 2", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1", 400),
        (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked", 400),
    ]
    for text, status in bad:
        with pytest.raises(HttpError) as e:
            req(text)
        assert e.value.status == status, text


def test_oversized_head() -> None:
    """A head larger than the limit is refused with 431 before it is complete."""
    reader = HeadReader(max_size=1024)
    with pytest.raises(HttpError) as e:
        for _ in range(10):
            reader.feed(b"X-Long: " + b"a" * 200 + b"\r\n")
    assert e.value.status == 431


def test_response_framing() -> None:
    """Response bodies: none for HEAD/1xx/204/304, chunked, length, else until close."""
    def framing(head: bytes, method: bytes = b"GET") -> BodyReader:
        return response_body(parse_response_head(head + b"\r\n\r\n"), method)

    assert framing(b"HTTP/1.1 200 OK\r\nContent-Length: 9", b"HEAD").kind == "none"
    assert framing(b"HTTP/1.1 204 No Content").kind == "none"
    assert framing(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked").kind == "chunked"
    assert framing(b"HTTP/1.1 200 OK\r\nContent-Length: 9").remaining == 9
    assert framing(b"HTTP/1.0 200 OK").kind == "close"
    assert not parse_response_head(b"HTTP/1.0 200 OK\r\n\r\n").keep_alive
    with pytest.raises(HttpError) as e:
        parse_response_head(b"HTTTP/1.1 200\r\n\r\n")
    assert e.value.status == 502


def _chunked(pieces: list[bytes], trailers: bytes = b"") -> bytes:
    return b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in pieces if p) + b"0\r\n" + trailers + b"\r\n"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=300), max_size=8), st.binary(max_size=50),
       st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=40))
def test_chunked_boundaries(pieces: list[bytes], after: bytes, cuts: list[int]) -> None:
    """However a chunked body is split, the reader stops exactly at its end."""
    body = _chunked(pieces, b"X-Trailer: 1\r\n")
    data = body + after
    reader = BodyReader("chunked")
    taken = 0
    pos = 0
    for size in cuts * (len(data) // max(sum(cuts), 1) + 1):
        if reader.done or pos >= len(data):
            break
        piece = data[pos:pos + size]
        taken += reader.feed(piece)
        pos += len(piece)
    if not reader.done and pos < len(data):
        taken += reader.feed(data[pos:])
    assert reader.done and taken == len(body)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_fuzz_request_parsers_never_crash(data: bytes) -> None:
    """Arbitrary bytes either parse or raise HttpError with a 4xx/5xx status; nothing else."""
    reader = HeadReader(max_size=1024)
    try:
        head = reader.feed(data)
        if head is not None:
            request = parse_request_head(head)
            request_body(request).feed(reader.take_rest())
    except HttpError as e:
        assert 400 <= e.status < 600
    try:
        BodyReader("chunked").feed(data)
    except HttpError as e:
        assert e.status == 400


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.from_regex(rb"[A-Za-z][A-Za-z0-9-]{0,20}", fullmatch=True),
                          st.from_regex(rb"[ -~]{0,40}", fullmatch=True)), max_size=10))
def test_fuzz_valid_heads_round_trip(headers: list[tuple[bytes, bytes]]) -> None:
    """Any well-formed head parses, and serializing it gives a head that parses the same."""
    fields = [(k, v.strip(b" \t")) for k, v in headers
              if k.lower() not in (b"host", b"content-length", b"transfer-encoding")]
    raw = b"GET /x HTTP/1.1\r\nHost: h\r\n" + b"".join(k + b": " + v + b"\r\n" for k, v in fields) + b"\r\n"
    request = parse_request_head(raw)
    assert parse_request_head(request.serialize()) == request


from nps.protocols.httphead import _parse_request_head, parse_request, parse_request_fast, parse_response_fast  # noqa: E402

_NAMES = st.sampled_from([b"Host", b"host", b"Content-Length", b"content-length", b"Transfer-Encoding",
                          b"Connection", b"X-A", b"Upgrade", b"Accept"])
_VALUES = st.sampled_from([b"a.com", b"5", b" 7 ", b"0", b"chunked", b"gzip, chunked", b"close", b"keep-alive",
                           b"Keep-Alive, Upgrade", b"x\ty", b"1, 1", b"-1", b"\x01", b"", b"v\xe9"])
_EOLS = st.sampled_from([b"\r\n"] * 6 + [b"\n", b"\r\n ", b"\r\r\n"])


def _outcome(fn: object, *args: object) -> object:
    try:
        return fn(*args)  # type: ignore[operator]
    except HttpError as e:
        return ("error", e.status)


def _reader_state(body: BodyReader) -> tuple[str, int, bool]:
    return body.kind, body.remaining, body.done


@settings(max_examples=400, deadline=None)
@given(st.sampled_from([b"GET /x", b"POST http://a.com/y?z", b"GET  /", b"G@T /"]),
       st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0"]),
       st.lists(st.tuples(_NAMES, _VALUES, _EOLS), max_size=6))
def test_fast_request_parser_agrees(line: bytes, version: bytes, fields: list[tuple[bytes, bytes, bytes]]) -> None:
    """Whatever the usual-shape fast path accepts, it answers exactly as the general parser."""
    head = line + b" " + version + b"\r\n" + b"".join(k + b": " + v + eol for k, v, eol in fields) + b"\r\n"
    end = head.find(b"\r\n\r\n")
    fast = _outcome(parse_request_fast, head[:end + 4])
    general = _outcome(lambda h: (_parse_request_head(h), request_body(_parse_request_head(h))), head[:end + 4])
    if fast is None:
        return
    if isinstance(fast, tuple) and fast[0] == "error":
        assert isinstance(general, tuple) and general[0] == "error" and general[1] == fast[1]
        return
    assert isinstance(general, tuple) and general[0] != "error"
    assert fast[0] == general[0] and fast[0].raw == head[:end + 4]  # type: ignore[index]
    assert _reader_state(fast[1]) == _reader_state(general[1])  # type: ignore[index]
    assert fast[0].keep_alive == general[0].keep_alive and fast[0].upgrade == general[0].upgrade  # type: ignore[index]
    assert _outcome(lambda h: _reader_state(parse_request(h)[1]), head[:end + 4]) == _reader_state(fast[1])  # type: ignore[index]


@settings(max_examples=400, deadline=None)
@given(st.sampled_from([b"HTTP/1.1 200 OK", b"HTTP/1.0 200 OK", b"HTTP/1.1 204 No Content", b"HTTP/1.1 100 Continue",
                        b"HTTP/1.1 304", b"HTTP/1.1 101 Switching", b"HTTP/1.1 099 x", b"HTTP/2.0 200 OK"]),
       st.sampled_from([b"GET", b"HEAD"]),
       st.lists(st.tuples(_NAMES, _VALUES, _EOLS), max_size=6), st.binary(max_size=8))
def test_fast_response_parser_agrees(line: bytes, method: bytes, fields: list[tuple[bytes, bytes, bytes]],
                                     before: bytes) -> None:
    """The fast response path gives the general parser's status, keep-alive and body framing, or defers."""
    head = line + b"\r\n" + b"".join(k + b": " + v + eol for k, v, eol in fields) + b"\r\n"
    data = before + head + b"body"
    end = data.find(b"\r\n\r\n", len(before))
    fast = _outcome(parse_response_fast, data, len(before), end + 4, method)
    if fast is None:
        return
    assert end + 4 == len(before) + len(head)

    def general(h: bytes) -> object:
        response = parse_response_head(h)
        body = response_body(response, method) if response.status >= 200 else None
        return response.status, response.keep_alive, body and _reader_state(body)

    expected = _outcome(general, head)
    if isinstance(fast, tuple) and fast[0] == "error":
        assert expected == fast
        return
    status, keep_alive, body = fast  # type: ignore[misc]
    if status < 200:  # only the final head's Connection counts
        keep_alive = expected[1]  # type: ignore[index]
    assert (status, keep_alive, body and _reader_state(body)) == expected


def test_header_count_limit_on_both_paths() -> None:
    """128 header lines parse (fast path); 129 get 431 for a request and 502 for a response."""
    lines = b"".join(b"X-%d: v\r\n" % i for i in range(127))
    request = b"GET / HTTP/1.1\r\nHost: a\r\n" + lines + b"\r\n"
    assert parse_request_fast(request) is not None
    with pytest.raises(HttpError) as e:
        parse_request(b"GET / HTTP/1.1\r\nHost: a\r\nX-Z: 1\r\n" + lines + b"\r\n")
    assert e.value.status == 431
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n" + lines + b"\r\n"
    assert parse_response_fast(response, 0, len(response), b"GET") is not None
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Z: 1\r\n" + lines + b"\r\n"
    assert parse_response_fast(response, 0, len(response), b"GET") is None
    with pytest.raises(HttpError) as e:
        parse_response_head(response)
    assert e.value.status == 502
