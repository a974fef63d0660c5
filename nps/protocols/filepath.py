# -*- test-case-name: test.test_filepath -*-
"""Sans-io mapping of an HTTP request target to a path under a served root.

The C{file} mode serves a read-only directory.  L{map_request_path} turns
the raw request target of an HTTP request (C{b"/web/a%20b.txt?x=1"}) into
the path segments to look up under the root (C{("a b.txt",)}), or refuses
it with an HTTP status:

  - the query and fragment are dropped, and an absolute-form target
    (C{http://host/path}) keeps only its path;
  - the path is split on C{/} B{before} percent-decoding, so an encoded
    slash (C{%2f}) can never create a new segment: a segment whose decoded
    form holds C{/}, C{\\} or NUL is refused, as is any raw backslash, NUL or
    control character, and any malformed escape (400);
  - a C{..} segment, raw or encoded (C{%2e%2e}), is refused (403); an
    encoded C{.} (C{%2e}) is refused too; a raw C{.} and empty segments
    (C{//}) are dropped;
  - C{strip_pre} (NPS: C{strip_pre=/web/} serves C{local_path/x} at
    C{/web/x}) is removed segment by segment; a path outside the prefix
    is not found (404).

Every segment returned is a plain file name: not empty, not C{.} or C{..},
with no separator and no NUL, so joining them under the root cannot leave
it lexically.  Symbolic links are the caller's business (it has the file
system): resolve the joined path and check it is still under the root.
"""
from __future__ import annotations

import re
from urllib.parse import quote

import attrs

#: Longest request target we look at (twisted.web limits the request line too).
MAX_TARGET = 8192

_ABSOLUTE_FORM = re.compile(rb"^[A-Za-z][A-Za-z0-9+.\-]*://[^/?#]*")
_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")
_BAD_RAW = re.compile(rb"[\x00-\x1f\x7f\\]")
_FORBIDDEN_DECODED = ("/", "\\", "\x00")


class PathRefused(Exception):
    """The request path cannot be served.

    @ivar status: the HTTP status to answer with (400, 403 or 404).
    @ivar reason: a short text for the log and the error page.
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


@attrs.frozen
class MappedPath:
    """Where a request points under the root.

    @ivar segments: file names from the root down (empty: the root itself).
    @ivar directory: the request path ended with C{/} (a directory was asked for).
    """

    segments: tuple[str, ...]
    directory: bool


def split_target(target: bytes) -> bytes:
    """The path part of a request target (no query, no fragment, no scheme/authority).

    @raise PathRefused: 400 if it is too long or not an absolute path.
    """
    if len(target) > MAX_TARGET:
        raise PathRefused(400, "request target too long")
    match = _ABSOLUTE_FORM.match(target)
    if match is not None:
        target = target[match.end():] or b"/"
    path = target.split(b"?", 1)[0].split(b"#", 1)[0]
    if not path.startswith(b"/"):
        raise PathRefused(400, "request path must start with /")
    return path


def decode_segment(raw: bytes) -> str:
    """Percent-decode one path segment (UTF-8; other bytes kept as surrogate escapes).

    @raise PathRefused: 400 on a malformed escape, a control character, a
        backslash, or a decoded C{/}, C{\\} or NUL.
    """
    if _BAD_RAW.search(raw):
        raise PathRefused(400, "control character or backslash in path")
    if b"%" in raw:
        if raw.count(b"%") != len(_ESCAPE.findall(raw)):
            raise PathRefused(400, "malformed percent escape in path")
        raw = _ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), raw)
    text = raw.decode("utf-8", "surrogateescape")
    for bad in _FORBIDDEN_DECODED:
        if bad in text:
            raise PathRefused(400, "encoded slash, backslash or NUL in path")
    return text


def split_path(path: bytes) -> list[str]:
    """Split a raw path on C{/}, decode each segment, drop C{.} and empty ones.

    @raise PathRefused: as L{decode_segment}; 403 for C{..} (raw or encoded)
        and for an encoded C{.}.
    """
    segments: list[str] = []
    for raw in path.split(b"/"):
        if raw in (b"", b"."):
            continue
        name = decode_segment(raw)
        if name == "..":
            raise PathRefused(403, "'..' in path")
        if name == ".":
            raise PathRefused(403, "encoded '.' in path")
        segments.append(name)
    return segments


def prefix_segments(strip_pre: str) -> tuple[str, ...]:
    """The segments of a C{strip_pre} setting (C{"/web/"} -> C{("web",)}).

    @raise ValueError: the prefix itself holds C{..}, an encoded separator or NUL.
    """
    try:
        return tuple(split_path(strip_pre.encode("utf-8", "surrogateescape")))
    except PathRefused as e:
        raise ValueError(f"bad strip_pre {strip_pre!r}: {e.reason}") from None


def map_request_path(target: bytes, strip_pre: str | tuple[str, ...] = "") -> MappedPath:
    """Map a raw HTTP request target to segments under the root.

    @param target: the request target as received (C{request.uri}).
    @param strip_pre: a prefix to remove (a string, or L{prefix_segments}).
    @raise PathRefused: the path is malformed (400), tries to escape (403),
        or lies outside C{strip_pre} (404).
    """
    path = split_target(target)
    segments = split_path(path)
    prefix = prefix_segments(strip_pre) if isinstance(strip_pre, str) else strip_pre
    if prefix:
        if tuple(segments[:len(prefix)]) != prefix:
            raise PathRefused(404, "outside strip_pre")
        segments = segments[len(prefix):]
    directory = path.endswith(b"/") or path.endswith(b"/.")
    return MappedPath(tuple(segments), directory)


def canonical_path(segments: tuple[str, ...], prefix: tuple[str, ...] = (), directory: bool = False) -> bytes:
    """The percent-encoded absolute path of C{prefix + segments} (for redirects).

    Built from decoded segments, never from the raw request, so a redirect
    always stays on this server (no C{//host} in the result).
    """
    parts = [quote(name.encode("utf-8", "surrogateescape"), safe=b"") for name in prefix + segments]
    path = "/" + "/".join(parts)
    if directory and not path.endswith("/"):
        path += "/"
    return path.encode("ascii")
