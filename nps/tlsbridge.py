# -*- test-case-name: test.test_e2e_tls_bridge -*-
"""The TLS bridge transport: certificates, TLS 1.3 contexts, trust on first use.

Server (C{nps.conf}): C{bridge_type=tls} makes C{bridge_port} speak TLS;
C{tls_enable=true} adds a TLS listener on C{tls_bridge_port} (8025) beside a
plain one, as in the NPS forks.  The certificate is C{tls_cert_file} /
C{tls_key_file} when set (e.g. one from a CA), otherwise a self-signed
EC P-256 certificate generated on first start and kept in
C{DATA_DIR/bridge_tls/} (key readable by its owner only).

Client (npc C{-type=tls} or C{conn_type=tls}): TLS 1.3 only.  With
C{-tls_ca=FILE} the server certificate must chain to that CA and name the
server (C{-tls_server_name}, default the host of C{-server}), checked by
service-identity.  Otherwise npc pins the certificate's SHA-256
fingerprint the first time the server proves it holds the vkey (trust on
first use), in the known-servers file (C{-tls_known_servers}, default
C{~/.config/npc/known_servers}), and refuses a different certificate later
with an error naming that file.
"""
from __future__ import annotations

import datetime
import hashlib
import os
from typing import Any, Callable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

log = Logger()

CERT_DIR = "bridge_tls"
CERT_NAME = "cert.pem"
KEY_NAME = "key.pem"
#: npc's default known-servers file (under C{$XDG_CONFIG_HOME} or C{~/.config}).
KNOWN_SERVERS = os.path.join("npc", "known_servers")
CERT_DAYS = 3650


class TlsSetupError(Exception):
    """A certificate or key cannot be made or read; C{str()} says which file and why."""


class PinMismatch(Exception):
    """The server's certificate is not the one pinned for it; C{str()} says what to do."""


def fingerprint(der: bytes) -> str:
    """C{sha256:HEX} of a DER certificate."""
    return "sha256:" + hashlib.sha256(der).hexdigest()


# -- server --------------------------------------------------------------------


def ensure_self_signed(data_dir: str) -> tuple[str, str]:
    """The bridge's self-signed certificate and key files, generated on first use.

    @return: (certificate path, key path).
    @raise TlsSetupError: if they cannot be written.
    """
    directory = os.path.join(data_dir, CERT_DIR)
    cert_path = os.path.join(directory, CERT_NAME)
    key_path = os.path.join(directory, KEY_NAME)
    if os.path.exists(cert_path) and os.path.exists(key_path):
        return cert_path, key_path
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nps bridge")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("nps-bridge")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        fd = os.open(key_path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key_pem)
        os.replace(key_path + ".tmp", key_path)
        with open(cert_path + ".tmp", "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        os.replace(cert_path + ".tmp", cert_path)
    except OSError as e:
        raise TlsSetupError(f"cannot create the bridge certificate in {directory}: {e}") from None
    log.info("bridge TLS: generated a self-signed certificate {path} ({fp})", path=cert_path,
             fp=fingerprint(_read_cert(cert_path).public_bytes(serialization.Encoding.DER)))
    return cert_path, key_path


def _read_cert(path: str) -> x509.Certificate:
    try:
        with open(path, "rb") as f:
            return x509.load_pem_x509_certificate(f.read())
    except (OSError, ValueError) as e:
        raise TlsSetupError(f"cannot read certificate {path}: {e}") from None


def server_options(cert_file: str, key_file: str) -> ssl.CertificateOptions:
    """TLS 1.3-only server options for the bridge (the chain in C{cert_file} is sent)."""
    try:
        with open(cert_file, "rb") as f:
            pem = f.read()
        with open(key_file, "rb") as f:
            key_pem = f.read()
        certs = [crypto.load_certificate(crypto.FILETYPE_PEM, block)
                 for block in _pem_blocks(pem)]
        if not certs:
            raise ValueError("no certificate in the file")
        key = crypto.load_privatekey(crypto.FILETYPE_PEM, key_pem)
    except (OSError, ValueError, crypto.Error) as e:
        raise TlsSetupError(f"cannot load bridge certificate {cert_file} / key {key_file}: {e}") from None
    return ssl.CertificateOptions(privateKey=key, certificate=certs[0], extraCertChain=certs[1:],
                                  raiseMinimumTo=ssl.TLSVersion.TLSv1_3)


def _pem_blocks(pem: bytes) -> list[bytes]:
    marker = b"-----END CERTIFICATE-----"
    return [block + marker for block in pem.split(marker) if b"-----BEGIN CERTIFICATE-----" in block]


def server_cert_files(config: Any) -> tuple[str, str]:
    """C{tls_cert_file}/C{tls_key_file} from nps.conf, or the generated self-signed pair."""
    if config.tls_cert_file or config.tls_key_file:
        if not (config.tls_cert_file and config.tls_key_file):
            raise TlsSetupError("tls_cert_file and tls_key_file must be set together")
        return config.tls_cert_file, config.tls_key_file
    return ensure_self_signed(config.data_dir)


def _server_options_or_exit(config: Any) -> ssl.CertificateOptions:
    try:
        cert_file, key_file = server_cert_files(config)
        options = server_options(cert_file, key_file)
    except TlsSetupError as e:
        raise SystemExit(f"nps: bridge TLS: {e}") from None
    log.info("bridge TLS certificate {path}: {fp}", path=cert_file,
             fp=fingerprint(_read_cert(cert_file).public_bytes(serialization.Encoding.DER)))
    return options


def tls_factory(config: Any, factory: Any) -> Any:
    """C{factory} wrapped in TLS when C{bridge_type=tls}, else C{factory} itself.

    @raise SystemExit: the certificate cannot be made or loaded.
    """
    if config.bridge_type != "tls":
        return factory
    return TLSMemoryBIOFactory(_server_options_or_exit(config), False, factory)


def listen_extra_tls(reactor: Any, config: Any, factory: Any) -> Any:
    """The C{tls_enable}/C{tls_bridge_port} listener beside the plain bridge, or None.

    @raise SystemExit: the port is taken or the certificate cannot be loaded.
    """
    if not getattr(config, "tls_enable", False) or config.bridge_type == "tls":
        return None
    options = _server_options_or_exit(config)
    try:
        port = reactor.listenTCP(config.tls_bridge_port, TLSMemoryBIOFactory(options, False, factory),
                                 interface=config.bridge_ip)
    except CannotListenError as e:
        raise SystemExit(f"nps: cannot listen on TLS bridge {config.bridge_ip}:{config.tls_bridge_port}: "
                         f"{e.socketError}") from None
    address = port.getHost()
    log.info("bridge (TLS) listening on {host}:{port}", host=address.host, port=address.port)
    return port


# -- client ----------------------------------------------------------------------


def default_known_servers() -> str:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, KNOWN_SERVERS)


class KnownServers:
    """The trust-on-first-use file: one C{host:port sha256:HEX} line per server."""

    def __init__(self, path: str) -> None:
        self.path = path

    def lookup(self, server: str) -> tuple[str, int] | None:
        """The pinned fingerprint of C{server} and its line number, or None."""
        try:
            with open(self.path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise PinMismatch(f"cannot read known servers file {self.path}: {e}") from None
        for number, line in enumerate(lines, 1):
            fields = line.split()
            if len(fields) >= 2 and not line.lstrip().startswith("#") and fields[0] == server:
                return fields[1].lower(), number
        return None

    def add(self, server: str, fp: str) -> None:
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(f"{server} {fp}\n")


@implementer(IOpenSSLClientConnectionCreator)
class PinningCreator:
    """TLS 1.3 client connections that accept exactly the pinned certificate (or, unpinned, any)."""

    def __init__(self, server: str, known: KnownServers, server_name: str) -> None:
        self.server = server
        self.known = known
        self.server_name = server_name
        #: Fingerprint the server showed on the latest connection.
        self.seen: str | None = None
        #: Set when the server showed a certificate other than the pinned one.
        self.mismatch: str | None = None

    def _verify(self, conn: Any, cert: Any, errno: int, depth: int, ok: int) -> bool:
        if depth != 0:
            return True  # only the server's own certificate is pinned
        fp = fingerprint(crypto.dump_certificate(crypto.FILETYPE_ASN1, cert))
        self.seen = fp
        try:
            pinned = self.known.lookup(self.server)
        except PinMismatch as e:
            self.mismatch = str(e)
            return False
        if pinned is None or pinned[0] == fp:
            return True
        self.mismatch = (
            f"the server {self.server} presented TLS certificate {fp}, but {self.known.path} line {pinned[1]} "
            f"pins {pinned[0]}: someone may be intercepting the connection. If the server's certificate "
            f"was changed on purpose, delete that line from {self.known.path} and start npc again"
        )
        return False

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        context = SSL.Context(SSL.TLS_METHOD)
        context.set_min_proto_version(SSL.TLS1_3_VERSION)
        context.set_verify(SSL.VERIFY_PEER, self._verify)
        connection = SSL.Connection(context, None)
        connection.set_app_data(tlsProtocol)
        if self.server_name:
            connection.set_tlsext_host_name(self.server_name.encode("idna"))
        return connection

    def trust(self) -> None:
        """The server proved the vkey over this connection: pin what it showed, if nothing is pinned yet."""
        if self.seen is None or self.known.lookup(self.server) is not None:
            return
        try:
            self.known.add(self.server, self.seen)
        except OSError as e:
            log.warn("bridge TLS: cannot record {server} in {path}: {error}", server=self.server,
                     path=self.known.path, error=str(e))
            return
        log.info("bridge TLS: trusting {server} certificate {fp} from now on (pinned in {path})",
                 server=self.server, fp=self.seen, path=self.known.path)


class TlsClient:
    """How npc dials a TLS bridge: CA-verified (C{ca_file}) or pinned on first use."""

    def __init__(self, host: str, port: int, *, ca_file: str = "", server_name: str = "",
                 known_servers: str = "") -> None:
        self.server = f"{host}:{port}"
        self.server_name = server_name or host
        self.pinning: PinningCreator | None = None
        if ca_file:
            try:
                with open(ca_file, "rb") as f:
                    pem = f.read()
                roots = [ssl.Certificate.loadPEM(block) for block in _pem_blocks(pem)]
                if not roots:
                    raise ValueError("no certificate in the file")
            except (OSError, ValueError, crypto.Error) as e:
                raise TlsSetupError(f"cannot read -tls_ca={ca_file}: {e}") from None
            trust = ssl.trustRootFromCertificates(roots)
            self.creator: Any = ssl.optionsForClientTLS(
                self.server_name, trustRoot=trust,
                extraCertificateOptions={"raiseMinimumTo": ssl.TLSVersion.TLSv1_3})
        else:
            self.pinning = PinningCreator(self.server, KnownServers(known_servers or default_known_servers()),
                                          "" if _is_ip(self.server_name) else self.server_name)
            self.creator = self.pinning

    def connect(self, reactor: Any, host: str, port: int, factory: Any, timeout: float) -> Deferred[Any]:
        endpoint = wrapClientTLS(self.creator, HostnameEndpoint(reactor, host, port, timeout=timeout))
        return endpoint.connect(factory)

    def authenticated(self) -> None:
        """The bridge handshake succeeded: pin on first use."""
        if self.pinning is not None:
            self.pinning.trust()

    def take_mismatch(self) -> str | None:
        """A pin mismatch seen since the last call (then npc must stop), else None."""
        if self.pinning is None or self.pinning.mismatch is None:
            return None
        message, self.pinning.mismatch = self.pinning.mismatch, None
        return message


def _is_ip(host: str) -> bool:
    from twisted.internet.abstract import isIPAddress, isIPv6Address

    return bool(isIPAddress(host) or isIPv6Address(host))


Connector = Callable[[Any, str, int, Any, float], "Deferred[Any]"]


def apply_client_flags(common: Any, type_flag: str | None, ca: str | None, server_name: str | None,
                       known_servers: str | None) -> Any:
    """npc's C{-type}, C{-tls_ca}, C{-tls_server_name}, C{-tls_known_servers} over npc.conf's [common].

    @raise TlsSetupError: C{-tls_ca} cannot be read.
    """
    import attrs

    changes: dict[str, str] = {}
    if type_flag in ("tcp", "tls", "kcp", "quic"):
        changes["conn_type"] = type_flag
    for key, value in (("tls_ca", ca), ("tls_server_name", server_name), ("tls_known_servers", known_servers)):
        if value:
            changes[key] = value
    common = attrs.evolve(common, **changes)
    if common.conn_type in ("tls", "kcp", "quic") and common.tls_ca:
        TlsClient("localhost", 1, ca_file=common.tls_ca)  # fail now if the CA file is unusable
    return common


def client_tls(host: str, port: int, common: Any) -> TlsClient | None:
    """The TLS dialer for npc's bridge when C{conn_type=tls}, else None."""
    if common.conn_type != "tls":
        return None
    return TlsClient(host, port, ca_file=common.tls_ca, server_name=common.tls_server_name,
                     known_servers=common.tls_known_servers)
