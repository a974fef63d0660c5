# -*- test-case-name: test.test_handshake -*-
"""Tests for L{nps.protocols.handshake}: versioned hello and mutual HMAC vkey proof, with no I/O."""
from __future__ import annotations

import hashlib
import hmac
import json
import string
from typing import Any, Callable, Iterator

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nps.protocols import handshake
from nps.protocols.handshake import (
    HELLO,
    LENGTH,
    MAGIC,
    MAX_MESSAGE,
    NONCE_SIZE,
    Authenticated,
    ClientHandshake,
    HandshakeError,
    ServerHandshake,
    UnknownKey,
    key_id,
)

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])

VKEY = "k3y-0f-the-npc-client-7d2a9"
INFO = {"version": "0.1", "remark": "office", "role": "client"}
EXTRA = {"client_id": 7, "ping_interval": 5.0}
NONCE_C = b"C" * NONCE_SIZE
NONCE_S = b"S" * NONCE_SIZE


def keystore(*vkeys: str) -> dict[str, str]:
    return {key_id(v): v for v in vkeys}


def lookup_in(store: dict[str, str]) -> Callable[[str], str | None]:
    return store.get


def message(body: bytes) -> bytes:
    """A length-prefixed handshake message with a raw body."""
    return LENGTH.pack(len(body)) + body


def json_message(obj: Any) -> bytes:
    return message(json.dumps(obj).encode())


@attrs.define
class Outcome:
    """What happened when a client and a server talked (as the bridge protocols drive them)."""

    client: Authenticated | None = None
    client_error: HandshakeError | None = None
    server: Authenticated | None = None
    server_error: HandshakeError | None = None
    client_rest: bytes = b""
    server_rest: bytes = b""
    c2s: bytes = b""
    s2c: bytes = b""
    unknown_key_raised: int = 0


def converse(
    client: ClientHandshake,
    server: ServerHandshake,
    *,
    extra: dict[str, Any] | None = None,
    sizes: Iterator[int] | None = None,
    on_unknown_key: Callable[[], None] | None = None,
    server_after: bytes = b"",
) -> Outcome:
    """Drive both sides the way C{nps.bridge.client}/C{nps.bridge.server} do.

    The server answers L{UnknownKey} by calling C{on_unknown_key} (the store
    refresh) and L{ServerHandshake.retry}; any L{HandshakeError} makes it send
    the error's pending C{out} bytes, then L{ServerHandshake.reject} (if its
    hello went out) and stop.  On success it
    sends L{ServerHandshake.accept} followed by C{server_after} (the first mux
    bytes).  C{sizes} chops every delivery into pieces of those sizes.
    """
    out = Outcome()
    to_server = bytearray()
    to_client = bytearray()
    c2s = bytearray()
    s2c = bytearray()
    server_done = client_done = False

    def send_to_server(data: bytes) -> None:
        to_server.extend(data)
        c2s.extend(data)

    def send_to_client(data: bytes) -> None:
        to_client.extend(data)
        s2c.extend(data)

    def take(buf: bytearray) -> bytes:
        n = max(1, next(sizes, len(buf))) if sizes is not None else len(buf)
        piece = bytes(buf[:n])
        del buf[:n]
        return piece

    def server_authenticated(result: Authenticated) -> None:
        nonlocal server_done
        server_done = True
        out.server = result
        send_to_client(server.accept(extra or {}))
        send_to_client(server_after)

    def server_failed(error: HandshakeError) -> None:
        nonlocal server_done
        server_done = True
        out.server_error = error
        if error.out:
            send_to_client(error.out)
        if server.hello_sent:
            send_to_client(server.reject(str(error)))

    send_to_server(client.hello())
    for _ in range(100_000):
        if to_server and not server_done:
            try:
                data, result = server.feed(take(to_server))
            except UnknownKey:
                out.unknown_key_raised += 1
                if on_unknown_key is not None:
                    on_unknown_key()
                try:
                    server_authenticated(server.retry())
                except HandshakeError as e:
                    server_failed(e)
                continue
            except HandshakeError as e:
                server_failed(e)
                continue
            send_to_client(data)
            if result is not None:
                server_authenticated(result)
        elif to_client and not client_done:
            try:
                data, result = client.feed(take(to_client))
            except HandshakeError as e:
                out.client_error = e
                client_done = True
                continue
            send_to_server(data)
            if result is not None:
                client_done = True
                out.client = result
                out.client_rest = result.rest + bytes(to_client)
                to_client.clear()
        else:
            break
    else:  # pragma: no cover
        raise AssertionError("handshake did not converge")
    if out.server is not None:
        out.server_rest = out.server.rest + bytes(to_server)
    out.c2s = bytes(c2s)
    out.s2c = bytes(s2c)
    return out


def hmac_hex(key: str, label: bytes, client_nonce: bytes, server_nonce: bytes) -> str:
    return hmac.new(key.encode(), label + client_nonce + server_nonce, hashlib.sha256).hexdigest()


# -- success --------------------------------------------------------------------


def test_client_and_server_agree() -> None:
    """A client and a server holding the same vkey both end authenticated, each seeing the other's message."""
    client = ClientHandshake(VKEY, 1, INFO)
    server = ServerHandshake(1, lookup_in(keystore("other", VKEY)))
    out = converse(client, server, extra=EXTRA)
    assert out.client_error is None and out.server_error is None
    assert out.server is not None and out.client is not None
    assert out.server.message["kid"] == key_id(VKEY)
    assert {k: out.server.message[k] for k in INFO} == INFO
    assert out.client.message["ok"] is True
    assert {k: out.client.message[k] for k in EXTRA} == EXTRA
    assert out.client_rest == b"" and out.server_rest == b""
    assert out.unknown_key_raised == 0


def test_bytes_after_the_server_reply_are_returned_as_rest() -> None:
    """Mux bytes the server sends right after its accept come back to the client in C{rest}, not lost."""
    client = ClientHandshake(VKEY, 1, INFO)
    server = ServerHandshake(1, lookup_in(keystore(VKEY)))
    out = converse(client, server, server_after=b"\x01first mux frames")
    assert out.client is not None
    assert out.client_rest == b"\x01first mux frames"


def test_bytes_after_the_client_message_are_returned_as_rest() -> None:
    """Bytes a client pipelines after its auth message are handed back in the server's C{rest}."""
    client = ClientHandshake(VKEY, 1, INFO)
    server = ServerHandshake(1, lookup_in(keystore(VKEY)))
    server_hello, result = server.feed(client.hello())
    assert result is None and server_hello.startswith(MAGIC)
    auth, result = client.feed(server_hello)
    assert result is None and auth
    _, result = server.feed(auth + b"PIPELINED")
    assert result is not None and result.rest == b"PIPELINED"


def test_server_hello_and_reply_in_one_chunk() -> None:
    """The client copes with the server hello and its reply arriving together (it still returns its auth bytes)."""
    client = ClientHandshake(VKEY, 1, INFO, nonce=NONCE_C)
    server = ServerHandshake(1, lookup_in(keystore(VKEY)), nonce=NONCE_S)
    server_hello, _ = server.feed(client.hello())
    # Compute what the client would send, on a twin with the same nonce, to get the server's reply early.
    twin = ClientHandshake(VKEY, 1, INFO, nonce=NONCE_C)
    auth, _ = twin.feed(server_hello)
    _, result = server.feed(auth)
    assert result is not None
    reply = server.accept({})
    sent, done = client.feed(server_hello + reply + b"tail")
    assert sent == auth
    assert done is not None and done.rest == b"tail"


def test_hello_layout() -> None:
    """The hello is MAGIC, version:u16 and a 32-byte nonce; nonces are random per handshake."""
    hello = ClientHandshake(VKEY, 3, INFO, nonce=NONCE_C).hello()
    assert hello == MAGIC + b"\x00\x03" + NONCE_C
    assert len(hello) == HELLO.size == 42
    assert ClientHandshake(VKEY, 1, INFO).hello() != ClientHandshake(VKEY, 1, INFO).hello()
    s1, _ = ServerHandshake(1, lookup_in({})).feed(hello[:8] + b"\x00\x01" + NONCE_C)
    s2, _ = ServerHandshake(1, lookup_in({})).feed(hello[:8] + b"\x00\x01" + NONCE_C)
    assert s1[:10] == s2[:10] == MAGIC + b"\x00\x01"
    assert s1[10:] != s2[10:]


def test_key_id_is_stable_and_one_way() -> None:
    """C{key_id} is deterministic, 32 hex characters, distinct per key, and does not contain the key."""
    assert key_id(VKEY) == key_id(VKEY)
    assert key_id(VKEY) != key_id(VKEY + "x")
    assert len(key_id(VKEY)) == 32
    assert all(c in string.hexdigits for c in key_id(VKEY))
    assert VKEY not in key_id(VKEY)


# -- wrong and unknown keys ----------------------------------------------------------


def test_wrong_vkey_is_refused() -> None:
    """A known key id with the wrong proof: the server raises "wrong vkey" and the client is told so."""
    kid = key_id(VKEY)
    client = ClientHandshake(VKEY, 1, INFO)
    server = ServerHandshake(1, lambda k: "a-different-key" if k == kid else None)
    out = converse(client, server)
    assert isinstance(out.server_error, HandshakeError)
    assert not isinstance(out.server_error, UnknownKey)
    assert str(out.server_error) == "wrong vkey"
    assert out.client is None
    assert str(out.client_error) == "server refused us: wrong vkey"


def test_unknown_key_then_retry_succeeds() -> None:
    """An unknown key id raises L{UnknownKey}; once the lookup learns the key, C{retry} authenticates."""
    store: dict[str, str] = {}
    client = ClientHandshake(VKEY, 1, INFO)
    server = ServerHandshake(1, lookup_in(store))
    out = converse(client, server, extra=EXTRA, on_unknown_key=lambda: store.update(keystore(VKEY)))
    assert out.unknown_key_raised == 1
    assert out.server is not None and out.server.message["kid"] == key_id(VKEY)
    assert out.client is not None and out.client.message["client_id"] == 7


def test_unknown_key_stays_unknown() -> None:
    """If the refreshed store still lacks the key, C{retry} raises L{UnknownKey} again and the client is refused."""
    client = ClientHandshake(VKEY, 1, INFO)
    server = ServerHandshake(1, lookup_in({}))
    out = converse(client, server, on_unknown_key=lambda: None)
    assert isinstance(out.server_error, UnknownKey)
    assert isinstance(out.server_error, HandshakeError)
    assert str(out.client_error) == "server refused us: wrong vkey"


def test_retry_with_a_different_key_learned() -> None:
    """If the refreshed store maps the key id to another key, C{retry} raises a plain "wrong vkey"."""
    store: dict[str, str] = {}
    client = ClientHandshake(VKEY, 1, INFO)
    server = ServerHandshake(1, lookup_in(store))
    out = converse(client, server, on_unknown_key=lambda: store.update({key_id(VKEY): "changed"}))
    assert type(out.server_error) is HandshakeError
    assert str(out.client_error) == "server refused us: wrong vkey"


def test_reject_reason_reaches_the_client() -> None:
    """Whatever reason the server rejects with (e.g. a session policy) is what the client's error says."""
    client = ClientHandshake(VKEY, 1, INFO)
    server = ServerHandshake(1, lookup_in(keystore(VKEY)))
    hello, _ = server.feed(client.hello())
    auth, _ = client.feed(hello)
    _, result = server.feed(auth)
    assert result is not None
    with pytest.raises(HandshakeError, match="^server refused us: client 7 is disabled$"):
        client.feed(server.reject("client 7 is disabled"))


# -- secrecy ---------------------------------------------------------------------

vkeys = st.text(alphabet=string.ascii_letters + string.digits + "-_", min_size=16, max_size=64)


@SETTINGS
@given(vkey=vkeys, wrong=st.booleans())
def test_vkey_never_on_the_wire(vkey: str, wrong: bool) -> None:
    """Neither side ever puts the vkey (nor the wrong key a server holds) on the wire, win or lose."""
    server_key = vkey[::-1] + "x" if wrong else vkey
    client = ClientHandshake(vkey, 1, INFO)
    server = ServerHandshake(1, lookup_in({key_id(vkey): server_key}))
    out = converse(client, server)
    assert (out.client is None) == wrong
    wire = out.c2s + out.s2c
    assert vkey.encode() not in wire
    assert server_key.encode() not in wire


def test_recorded_client_auth_replayed_against_new_nonce_fails() -> None:
    """A recorded client hello+auth replayed to a server with a fresh nonce is refused ("wrong vkey")."""
    client = ClientHandshake(VKEY, 1, INFO, nonce=NONCE_C)
    out = converse(client, ServerHandshake(1, lookup_in(keystore(VKEY)), nonce=NONCE_S))
    assert out.server is not None
    recorded_hello, recorded_auth = out.c2s[: HELLO.size], out.c2s[HELLO.size :]

    fresh = ServerHandshake(1, lookup_in(keystore(VKEY)), nonce=b"F" * NONCE_SIZE)
    fresh.feed(recorded_hello)
    with pytest.raises(HandshakeError, match="wrong vkey"):
        fresh.feed(recorded_auth)

    # Control: only the nonce makes the difference.
    same = ServerHandshake(1, lookup_in(keystore(VKEY)), nonce=NONCE_S)
    same.feed(recorded_hello)
    assert same.feed(recorded_auth)[1] is not None


def test_recorded_server_reply_replayed_to_new_client_fails() -> None:
    """A recorded server hello+accept replayed to a client with a fresh nonce fails the server-proof check."""
    out = converse(ClientHandshake(VKEY, 1, INFO, nonce=NONCE_C),
                   ServerHandshake(1, lookup_in(keystore(VKEY)), nonce=NONCE_S))
    assert out.client is not None
    fresh = ClientHandshake(VKEY, 1, INFO, nonce=b"N" * NONCE_SIZE)
    with pytest.raises(HandshakeError, match="server failed to prove it knows the vkey"):
        fresh.feed(out.s2c)


# -- the client checks the server ---------------------------------------------------


def _impostor(reply: Callable[[bytes, bytes], dict[str, Any]]) -> HandshakeError:
    """Run a client against a hand-made server whose reply is C{reply(client_nonce, server_nonce)}."""
    client = ClientHandshake(VKEY, 1, INFO)
    client_nonce = client.hello()[10:]
    auth, result = client.feed(HELLO.pack(MAGIC, 1, NONCE_S))
    assert auth and result is None
    with pytest.raises(HandshakeError) as info:
        client.feed(json_message(reply(client_nonce, NONCE_S)))
    return info.value


def test_client_rejects_server_with_a_different_key() -> None:
    """A server that says ok but proves a different key is rejected by the client."""
    error = _impostor(lambda cn, sn: {"ok": True, "proof": hmac_hex("not-" + VKEY, handshake._SERVER_LABEL, cn, sn)})
    assert str(error) == "server failed to prove it knows the vkey (wrong server?)"


def test_client_rejects_ok_without_proof() -> None:
    """A bare {"ok": true} without a proof is not enough."""
    assert "failed to prove" in str(_impostor(lambda cn, sn: {"ok": True}))


def test_client_rejects_its_own_proof_reflected() -> None:
    """A server echoing the client's own proof back (reflection) is rejected: the proofs use different labels."""
    assert "failed to prove" in str(_impostor(
        lambda cn, sn: {"ok": True, "proof": hmac_hex(VKEY, handshake._CLIENT_LABEL, cn, sn)}))


def test_client_rejects_proof_with_swapped_nonces() -> None:
    """The server proof binds the nonces in order; swapping them does not verify."""
    assert "failed to prove" in str(_impostor(
        lambda cn, sn: {"ok": True, "proof": hmac_hex(VKEY, handshake._SERVER_LABEL, sn, cn)}))


def test_client_accepts_the_genuine_proof() -> None:
    """Sanity check of the impostor harness: the right key, label and nonce order verify."""
    client = ClientHandshake(VKEY, 1, INFO)
    cn = client.hello()[10:]
    client.feed(HELLO.pack(MAGIC, 1, NONCE_S))
    _, result = client.feed(json_message({"ok": True, "proof": hmac_hex(VKEY, handshake._SERVER_LABEL, cn, NONCE_S)}))
    assert result is not None


@pytest.mark.parametrize("reply", [{"ok": False}, {"ok": 1, "proof": "x"}, {"ok": "true"}, {"error": "nope"}])
def test_anything_but_ok_true_is_a_refusal(reply: dict[str, Any]) -> None:
    """Only a literal JSON true counts as ok; otherwise the client reports the server's error (or none given)."""
    expected = f"server refused us: {reply.get('error', 'no reason given')}"
    assert str(_impostor(lambda cn, sn: reply)) == expected


# -- version and magic -------------------------------------------------------------


def test_server_reports_version_mismatch() -> None:
    """A client hello with another protocol version: the server raises naming both versions."""
    server = ServerHandshake(2, lookup_in({}))
    with pytest.raises(HandshakeError, match="^client speaks bridge protocol version 1, we speak 2$"):
        server.feed(ClientHandshake(VKEY, 1, INFO).hello())
    assert server.hello_sent  # so the caller sends reject()


def test_client_reports_version_mismatch() -> None:
    """A server hello with another protocol version: the client raises naming both versions."""
    client = ClientHandshake(VKEY, 1, INFO)
    with pytest.raises(HandshakeError, match="^server speaks bridge protocol version 2, we speak 1$"):
        client.feed(HELLO.pack(MAGIC, 2, NONCE_S))


def test_version_mismatch_end_to_end_tells_the_client() -> None:
    """Driven like the bridge (reject after a failed feed), a client of another version learns it is a version problem."""
    out = converse(ClientHandshake(VKEY, 2, INFO), ServerHandshake(1, lookup_in(keystore(VKEY))))
    assert "version" in str(out.server_error)
    assert out.client_error is not None
    assert "version" in str(out.client_error), str(out.client_error)


@pytest.mark.parametrize("garbage", [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01",
                                     b"SSH-2.0-OpenSSH_9.6\r\n"])
def test_server_rejects_bad_magic_early(garbage: bytes) -> None:
    """A non-nps client is refused as soon as 8 bytes are in, without waiting for a whole hello, and no reject is due."""
    server = ServerHandshake(1, lookup_in({}))
    with pytest.raises(HandshakeError, match="not an nps bridge client"):
        server.feed(garbage[:8])
    assert not server.hello_sent


def test_server_waits_on_a_correct_magic_prefix() -> None:
    """A partial but so far correct magic is simply buffered."""
    assert ServerHandshake(1, lookup_in({})).feed(MAGIC[:5]) == (b"", None)


def test_client_rejects_bad_server_magic() -> None:
    """A server hello with the wrong magic is refused with a message quoting it."""
    client = ClientHandshake(VKEY, 1, INFO)
    with pytest.raises(HandshakeError, match=r"server is not an nps bridge peer \(bad magic b'HTTP/1.1'\)"):
        client.feed(b"HTTP/1.1 400 Bad Request\r\n\r\n" + b"x" * 40)


# -- malformed messages ----------------------------------------------------------------


def _server_after_hello() -> ServerHandshake:
    server = ServerHandshake(1, lookup_in(keystore(VKEY)))
    server.feed(ClientHandshake(VKEY, 1, INFO).hello())
    return server


def _client_after_hello() -> ClientHandshake:
    client = ClientHandshake(VKEY, 1, INFO)
    client.feed(HELLO.pack(MAGIC, 1, NONCE_S))
    return client


def test_server_rejects_oversize_length_before_the_body() -> None:
    """A length prefix over MAX_MESSAGE is refused from the 2-byte prefix alone."""
    with pytest.raises(HandshakeError, match=f"^client auth message of {MAX_MESSAGE + 1} bytes exceeds limit"):
        _server_after_hello().feed(LENGTH.pack(MAX_MESSAGE + 1))


def test_client_rejects_oversize_reply() -> None:
    """A server reply longer than MAX_MESSAGE is refused from its prefix."""
    with pytest.raises(HandshakeError, match=f"^server reply of {0xFFFF} bytes exceeds limit"):
        _client_after_hello().feed(LENGTH.pack(0xFFFF))


def test_message_of_exactly_max_size_is_accepted() -> None:
    """A client message of exactly MAX_MESSAGE bytes is parsed (the limit is inclusive)."""
    server = _server_after_hello()
    body = json.dumps({"kid": "0" * 32, "proof": "p", "pad": ""}).encode()
    body = body[:-2] + b"x" * (MAX_MESSAGE - len(body)) + body[-2:]
    assert len(body) == MAX_MESSAGE
    with pytest.raises(UnknownKey):
        server.feed(message(body))


def test_accept_with_too_large_extra() -> None:
    """Packing a reply beyond MAX_MESSAGE raises L{HandshakeError} instead of sending a bad length."""
    server = ServerHandshake(1, lookup_in(keystore(VKEY)))
    converse(ClientHandshake(VKEY, 1, INFO), server)
    with pytest.raises(HandshakeError, match="too large"):
        server.accept({"blob": "x" * MAX_MESSAGE})


GARBAGE_BODIES = [
    pytest.param(b"\xff\xfe\xfd", "client auth message is not valid JSON", id="not-utf8"),
    pytest.param(b"kid=1&proof=2", "client auth message is not valid JSON", id="not-json"),
    pytest.param(b"", "client auth message is not valid JSON", id="empty"),
    pytest.param(b"[1, 2]", "client auth message is not a JSON object", id="list"),
    pytest.param(b'"kid"', "client auth message is not a JSON object", id="string"),
    pytest.param(b"{}", "client auth message lacks kid/proof", id="empty-object"),
    pytest.param(b'{"kid": 1, "proof": "x"}', "client auth message lacks kid/proof", id="int-kid"),
    pytest.param(b'{"kid": "x", "proof": null}', "client auth message lacks kid/proof", id="null-proof"),
]


@pytest.mark.parametrize("body, expected", GARBAGE_BODIES)
def test_server_rejects_garbage_json(body: bytes, expected: str) -> None:
    """A malformed client auth message raises L{HandshakeError} with a clear message."""
    with pytest.raises(HandshakeError) as info:
        _server_after_hello().feed(message(body))
    assert str(info.value).startswith(expected)


@pytest.mark.parametrize("body, expected", [
    (b"\x80", "server reply is not valid JSON"),
    (b"nope", "server reply is not valid JSON"),
    (b"[true]", "server reply is not a JSON object"),
    (b"42", "server reply is not a JSON object"),
])
def test_client_rejects_garbage_json(body: bytes, expected: str) -> None:
    """A malformed server reply raises L{HandshakeError} with a clear message."""
    with pytest.raises(HandshakeError) as info:
        _client_after_hello().feed(message(body))
    assert str(info.value).startswith(expected)


def test_server_rejects_deeply_nested_json() -> None:
    """A small but deeply nested JSON message is a L{HandshakeError}, not a crash of the bridge protocol."""
    with pytest.raises(HandshakeError):
        _server_after_hello().feed(message(b"[" * 10_000))


def test_client_rejects_deeply_nested_json() -> None:
    """A deeply nested server reply is a L{HandshakeError}."""
    with pytest.raises(HandshakeError):
        _client_after_hello().feed(message(b'{"a":' * 3_000))


def test_server_rejects_non_ascii_proof() -> None:
    """A proof string with non-ASCII characters is just a wrong proof (L{HandshakeError}), not a TypeError."""
    with pytest.raises(HandshakeError):
        _server_after_hello().feed(json_message({"kid": key_id(VKEY), "proof": "\u00e9" * 64}))


def test_client_rejects_non_ascii_proof() -> None:
    """A server proof with non-ASCII characters is a failed proof (L{HandshakeError}), not a TypeError."""
    with pytest.raises(HandshakeError):
        _client_after_hello().feed(json_message({"ok": True, "proof": "\u00e9"}))


@SETTINGS
@given(data=st.binary(max_size=200))
def test_server_random_input_raises_only_handshake_error(data: bytes) -> None:
    """Whatever a client sends after its hello, the server either waits, authenticates or raises L{HandshakeError}."""
    try:
        _server_after_hello().feed(data)
    except HandshakeError:
        pass


@SETTINGS
@given(obj=st.recursive(st.none() | st.booleans() | st.integers() | st.text(alphabet=string.printable, max_size=20),
                        lambda children: st.lists(children, max_size=4)
                        | st.dictionaries(st.sampled_from(["kid", "proof", "ok", "x"]), children, max_size=4),
                        max_leaves=12))
def test_any_json_raises_only_handshake_error(obj: Any) -> None:
    """Any (ASCII) JSON value as client message or server reply yields a result or L{HandshakeError}."""
    for side in (_server_after_hello(), _client_after_hello()):
        try:
            side.feed(json_message(obj))
        except HandshakeError:
            pass


# -- chunking -------------------------------------------------------------------------


@SETTINGS
@given(sizes=st.lists(st.integers(min_value=1, max_value=60), min_size=1, max_size=40), unknown_first=st.booleans(),
       after=st.binary(max_size=40))
def test_any_split_points(sizes: list[int], unknown_first: bool, after: bytes) -> None:
    """Delivering every direction in arbitrary pieces changes nothing: both sides authenticate, rest is intact."""
    store = {} if unknown_first else keystore(VKEY)
    client = ClientHandshake(VKEY, 1, INFO)
    server = ServerHandshake(1, lookup_in(store))
    out = converse(client, server, extra=EXTRA, sizes=iter(sizes * 50),
                   on_unknown_key=lambda: store.update(keystore(VKEY)), server_after=after)
    assert out.server_error is None and out.client_error is None
    assert out.server is not None and out.client is not None
    assert out.client.message["client_id"] == 7
    assert out.client_rest == after
    assert out.unknown_key_raised == (1 if unknown_first else 0)


@SETTINGS
@given(sizes=st.lists(st.integers(min_value=1, max_value=60), min_size=1, max_size=40))
def test_any_split_points_wrong_key(sizes: list[int]) -> None:
    """Chunking never turns a wrong key into success; the client always hears "wrong vkey"."""
    client = ClientHandshake(VKEY, 1, INFO)
    server = ServerHandshake(1, lookup_in({key_id(VKEY): "other"}))
    out = converse(client, server, sizes=iter(sizes * 50))
    assert out.server is None and out.client is None
    assert str(out.client_error) == "server refused us: wrong vkey"
