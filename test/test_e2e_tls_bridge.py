# -*- test-case-name: test.test_e2e_tls_bridge -*-
"""
End-to-end tests of the TLS bridge (C{bridge_type=tls}, C{tls_enable} +
C{tls_bridge_port}; npc C{-type=tls} / C{conn_type=tls}) with real nps and
npc processes, the real C{openssl} command line and a recording tap on the
bridge.  Trust on first use, pin mismatches and CA-verified names are
covered.  Everything stays on 127.0.0.1; no timing is asserted.
"""
from __future__ import annotations

import datetime
import hashlib
import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

try:
    from . import support  # type: ignore[import-not-found]
    from .test_e2e_crypt import echo_port, echo_round_trip, taps  # type: ignore[import-not-found]  # noqa: F401
except ImportError:
    import support  # type: ignore[no-redef]
    from test_e2e_crypt import echo_port, echo_round_trip, taps  # type: ignore[no-redef]  # noqa: F401

pytestmark = pytest.mark.e2e

VKEY = "tls-bridge-e2e-public-key-0123"


def cert_fingerprint(path: Path) -> str:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return "sha256:" + hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def npc_conf(server_addr: str, echo: int, port: int, **common: object) -> str:
    conf = support.render_npc_conf(server_addr, VKEY, {"t1": {"mode": "tcp", "server_ip": "127.0.0.1",
                                                              "server_port": port,
                                                              "target_addr": f"127.0.0.1:{echo}"}}, **common)
    return conf.replace("conn_type=tcp\n", "")


def tls_tunnel(nps_server: Any, npc_client: Any, echo: int, tmp_path: Path, server_addr: str | None = None,
               extra: dict[str, object] | None = None, **common: object) -> tuple[Any, Any, int, Path]:
    server = nps_server(public_vkey=VKEY, extra={"bridge_type": "tls", **(extra or {})})
    known = tmp_path / "known_servers"
    port = support.free_port()
    npc = npc_client(conf=npc_conf(server_addr or server.bridge_addr, echo, port, conn_type="tls",
                                   tls_known_servers=known, **common))
    support.wait_for_log(npc, "tunnel t1 is open on the server")
    support.wait_for_port("127.0.0.1", port, proc=server.proc)
    return server, npc, port, known


def test_tls_bridge_with_trust_on_first_use(nps_server: Any, npc_client: Any, echo_port: int,
                                            tmp_path: Path) -> None:
    """bridge_type=tls: a self-signed cert appears in the data dir (key 0600), npc pins it, the tunnel works."""
    server, npc, port, known = tls_tunnel(nps_server, npc_client, echo_port, tmp_path)
    cert = server.data_dir / "bridge_tls" / "cert.pem"
    key = server.data_dir / "bridge_tls" / "key.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    payload = os.urandom(300000)
    assert echo_round_trip(port, payload) == payload
    pinned = support.until(lambda: known.read_text().strip(), what="pin written")
    assert pinned == f"{server.bridge_addr} {cert_fingerprint(cert)}"
    assert "pinned in" in npc.log_text()


def test_tls_hides_everything_on_the_bridge(nps_server: Any, npc_client: Any, echo_port: int, taps: Any,
                                            tmp_path: Path) -> None:
    """Even without crypt, a marker and the handshake's magic are not visible on a TLS bridge."""
    server = nps_server(public_vkey=VKEY, extra={"bridge_type": "tls"})
    tap = taps(server.bridge_port)
    port = support.free_port()
    npc = npc_client(conf=npc_conf(f"127.0.0.1:{tap.port}", echo_port, port, conn_type="tls",
                                   tls_known_servers=tmp_path / "known"))
    support.wait_for_log(npc, "tunnel t1 is open on the server")
    marker = b"TLSMARK-" + os.urandom(10).hex().encode()
    payload = marker * 1000
    assert echo_round_trip(port, payload) == payload
    captured = tap.captured()
    assert marker not in captured
    assert b"NPSPY" not in captured
    assert captured[:1] == b"\x16"  # a TLS handshake record


def test_changed_certificate_is_refused_naming_the_file(nps_server: Any, npc_client: Any, echo_port: int,
                                                        tmp_path: Path) -> None:
    server, npc, port, known = tls_tunnel(nps_server, npc_client, echo_port, tmp_path)
    support.until(lambda: known.exists() and known.read_text().strip(), what="pin written")
    npc.stop()
    server.stop()
    shutil.rmtree(server.data_dir / "bridge_tls")  # the server gets a new certificate
    server.start()
    npc2 = npc_client(conf=npc_conf(server.bridge_addr, echo_port, support.free_port(), conn_type="tls",
                                    tls_known_servers=known), name="npc2")
    code = support.until(lambda: npc2.poll() is not None and npc2.returncode, what="npc to stop", timeout=60)
    assert code == 1
    log = npc2.log_text()
    assert "presented TLS certificate" in log and str(known) in log and "delete that line" in log


def test_tls_enable_adds_a_tls_port_beside_the_plain_one(nps_server: Any, npc_client: Any, echo_port: int,
                                                         tmp_path: Path) -> None:
    """tls_enable=true + tls_bridge_port as in NPS forks; npc -type=tls on the command line."""
    tls_port = support.free_port()
    server = nps_server(start=False, extra={"tls_enable": True, "tls_bridge_port": tls_port})
    client = server.add_client("tls")
    assert client.id is not None
    public = support.free_port()
    server.add_tunnel(client.id, public, f"127.0.0.1:{echo_port}")
    server.start()
    support.wait_for_port("127.0.0.1", tls_port, proc=server.proc)
    npc = npc_client(f"-server=127.0.0.1:{tls_port}", f"-vkey={client.vkey}", "-type=tls",
                     f"-tls_known_servers={tmp_path / 'known'}")
    support.wait_for_log(npc, "connected to server")
    support.wait_for_port("127.0.0.1", public, proc=server.proc)
    assert echo_round_trip(public, b"over tls" * 1000) == b"over tls" * 1000
    # the plain port still speaks the plain protocol (a TLS hello there gets no TLS answer)
    probe = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{server.bridge_port}", "-brief"],
                           input=b"", capture_output=True, timeout=30)
    assert probe.returncode != 0


def test_tls_below_1_3_is_refused_by_openssl(nps_server: Any) -> None:
    server = nps_server(public_vkey=VKEY, extra={"bridge_type": "tls"})
    old = subprocess.run(["openssl", "s_client", "-connect", server.bridge_addr, "-tls1_2", "-brief"],
                         input=b"", capture_output=True, timeout=30)
    assert old.returncode != 0
    new = subprocess.run(["openssl", "s_client", "-connect", server.bridge_addr, "-tls1_3", "-brief"],
                         input=b"", capture_output=True, timeout=30)
    assert b"TLSv1.3" in new.stdout + new.stderr


def make_ca_and_server_cert(directory: Path, name: str) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for C{name} signed by it (files: ca.pem, server.pem, server.key)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_path, cert_path, key_path = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return ca_path, cert_path, key_path


@pytest.mark.parametrize("name_ok", [True, False])
def test_ca_verified_server_name(nps_server: Any, npc_client: Any, echo_port: int, tmp_path: Path,
                                 name_ok: bool) -> None:
    """-tls_ca / tls_server_name: the certificate must chain to the CA and carry the name (service-identity)."""
    ca, cert, key = make_ca_and_server_cert(tmp_path, "nps.test")
    server = nps_server(public_vkey=VKEY, extra={"bridge_type": "tls", "tls_cert_file": cert, "tls_key_file": key})
    port = support.free_port()
    conf = npc_conf(server.bridge_addr, echo_port, port, conn_type="tls", tls_ca=ca,
                    tls_server_name="nps.test" if name_ok else "other.test")
    npc = npc_client(conf=conf)
    if name_ok:
        support.wait_for_log(npc, "tunnel t1 is open on the server")
        assert echo_round_trip(port, b"ca" * 5000) == b"ca" * 5000
    else:
        line = support.wait_for_log(npc, "refused the connection")
        print(line)
        assert "certificate verify failed" in line or "other.test" in line, line
        assert "is open on the server" not in npc.log_text()
