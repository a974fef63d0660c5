# -*- test-case-name: test.test_e2e_secret -*-
"""Real processes: ssh to a real sshd through a secret tunnel, from a visitor npc."""
from __future__ import annotations

import subprocess
from typing import Any, Callable

import pytest

try:
    from . import support  # type: ignore[import-not-found]
except ImportError:
    import support  # type: ignore[no-redef]

pytestmark = pytest.mark.e2e


def test_ssh_through_a_secret_tunnel(nps_server: Callable[..., Any], npc_client: Callable[..., Any],
                                     sshd: Any) -> None:
    """Provider npc.conf [ssh_secret] mode=secret; visitor `npc -password= -local_type=secret -local_port=`;
    ssh to the visitor's local port reaches the sshd; a visitor with the wrong password is refused."""
    server = nps_server(start=False)
    provider = server.add_client("provider")
    visitor = server.add_client("visitor")
    server.start()
    conf = support.render_npc_conf(server.bridge_addr, provider.vkey, {
        "ssh_secret": {"mode": "secret", "password": "ssh2-e2e", "target_addr": f"127.0.0.1:{sshd.port}"}})
    provider_npc = npc_client(conf=conf, name="provider")
    support.wait_for_log(provider_npc, "tunnel ssh_secret is open on the server", 30)
    local_port, wrong_port = support.free_port(), support.free_port()
    visitor_npc = npc_client(f"-server={server.bridge_addr}", f"-vkey={visitor.vkey}", "-password=ssh2-e2e",
                             "-local_type=secret", f"-local_port={local_port}", name="visitor")
    support.wait_for_port("127.0.0.1", local_port, 30, proc=visitor_npc)
    support.wait_for_log(visitor_npc, "connected to server", 30)
    result = subprocess.run(sshd.ssh_cmd(port=local_port) + ["echo", "hello-through-secret"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "hello-through-secret"

    wrong = npc_client(f"-server={server.bridge_addr}", f"-vkey={visitor.vkey}", "-password=not-it",
                       "-local_type=secret", f"-local_port={wrong_port}", name="wrong-visitor")
    support.wait_for_port("127.0.0.1", wrong_port, 30, proc=wrong)
    support.wait_for_log(wrong, "connected to server", 30)
    refused = subprocess.run(sshd.ssh_cmd(port=wrong_port) + ["true"], capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0
    support.wait_for_log(wrong, "refused the visit", 30)
