"""
The web admin API against a real nps process and a real npc: create a client and a tunnel
over HTTP, traffic flows and is counted, counters survive a flush and a restart, a kill -9
keeps every configuration change, editing and deleting apply live.
"""
from __future__ import annotations

import json
import signal
import urllib.error
import urllib.request
from typing import Any, Callable

try:
    from . import support  # type: ignore[import-not-found]
except ImportError:
    import support  # type: ignore[no-redef]

from nps.store import Store

PASSWORD = "e2e admin password that is long"


class Api:
    def __init__(self, port: int, token: str) -> None:
        self.base = f"http://127.0.0.1:{port}/api/v1/"
        self.token = token

    def __call__(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method, headers={
            "Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")


def fetch(port: int) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/hello.txt", timeout=5) as response:
        return bytes(response.read())


def test_api_client_tunnel_traffic_restart_kill(
    nps_server: Callable[..., Any], npc_client: Callable[..., Any], http_backend: Any
) -> None:
    web_port = support.free_port()
    server = nps_server(extra={"web_port": web_port, "web_ip": "127.0.0.1", "web_password": PASSWORD},
                        start=False)
    created = server.admin("admin", "token", "create", "e2e", check=True)
    token = created.stdout.split(": ", 1)[1].splitlines()[0].strip()
    server.start()
    support.wait_for_port("127.0.0.1", web_port, 30, proc=server.proc)
    api = Api(web_port, token)

    code, client = api("POST", "clients", {"remark": "e2e"})
    assert code == 201, client
    npc = npc_client(f"-server={server.bridge_addr}", f"-vkey={client['vkey']}", "-type=tcp")
    support.until(lambda: api("GET", f"clients/{client['id']}")[1]["online"], 30, "npc online")

    port = support.free_port()
    code, tunnel = api("POST", "tunnels", {"client_id": client["id"], "mode": "tcp", "server_port": port,
                                           "server_ip": "127.0.0.1", "targets": [f"127.0.0.1:{http_backend.port}"]})
    assert code == 201 and tunnel["running"], tunnel
    body = support.until(lambda: fetch(port), 30, "HTTP through the API-made tunnel")
    assert body
    code, traffic = api("GET", "traffic")
    used = traffic["tunnels"][str(tunnel["id"])]
    assert used["bytes_out"] >= len(body)

    # flushed to the store by the running server (flow_store_interval default: every 10 s)
    def persisted() -> Any:
        store = Store(str(server.data_dir))
        try:
            return store.traffic("tunnel").get(tunnel["id"], (0, 0))[1] >= len(body)
        finally:
            store.close()
    support.until(persisted, 60, "traffic flushed to the store")

    # graceful restart: counters and config survive; npc comes back, the tunnel works again
    server.restart()
    support.wait_for_port("127.0.0.1", web_port, 30, proc=server.proc)
    code, traffic = api("GET", "traffic")
    assert traffic["tunnels"][str(tunnel["id"])]["bytes_out"] >= used["bytes_out"]
    support.until(lambda: api("GET", f"clients/{client['id']}")[1]["online"], 60, "npc back online")
    support.until(lambda: fetch(port), 30, "tunnel after restart")

    # a change right before kill -9 is kept: configuration is written before the API answers
    second = support.free_port()
    code, later = api("POST", "tunnels", {"client_id": client["id"], "mode": "tcp", "server_port": second,
                                          "server_ip": "127.0.0.1", "targets": [f"127.0.0.1:{http_backend.port}"]})
    assert code == 201
    server.proc.kill(signal.SIGKILL)
    server.proc.wait(10)
    server.start()
    support.wait_for_port("127.0.0.1", web_port, 30, proc=server.proc)
    code, tunnels = api("GET", "tunnels")
    assert {t["id"] for t in tunnels} == {tunnel["id"], later["id"]}
    support.until(lambda: fetch(second), 60, "the tunnel added before kill -9")

    # editing a client takes effect: disabled -> disconnected; deleting a tunnel closes its port
    code, _ = api("DELETE", f"tunnels/{later['id']}")
    assert code == 200
    assert not support.port_open("127.0.0.1", second)
    code, edited = api("PATCH", f"clients/{client['id']}", {"enabled": False})
    assert code == 200 and not edited["online"]
    assert not support.port_open("127.0.0.1", port) or not fetch_ok(port)
    assert npc.alive  # npc keeps retrying; the server refuses it while disabled


def fetch_ok(port: int) -> bool:
    try:
        fetch(port)
        return True
    except OSError:
        return False


def login(port: int, username: str, password: str) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/login", method="POST",
        data=json.dumps({"username": username, "password": password}).encode(),
        headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return e.code


def test_npc_conf_web_login(nps_server: Callable[..., Any], npc_client: Callable[..., Any]) -> None:
    """
    npc.conf [common] web_username/web_password become the client's own admin login
    (stored hashed); a name the admin or another client uses is refused with a log line.
    """
    web_port = support.free_port()
    server = nps_server(extra={"web_port": web_port, "web_ip": "127.0.0.1", "web_password": PASSWORD,
                               "allow_user_login": True}, start=False)
    created = server.admin("admin", "token", "create", "e2e", check=True)
    token = created.stdout.split(": ", 1)[1].splitlines()[0].strip()
    server.start()
    support.wait_for_port("127.0.0.1", web_port, 30, proc=server.proc)
    api = Api(web_port, token)
    _, alice = api("POST", "clients", {"remark": "alice"})
    _, mallory = api("POST", "clients", {"remark": "mallory"})
    alice_password = "alice's npc.conf password, long enough"
    npc_client(conf=support.render_npc_conf(server.bridge_addr, alice["vkey"], web_username="alice",
                                            web_password=alice_password))
    support.until(lambda: "web login 'alice' set from its npc.conf" in server.log_text(), 30, "web login stored")
    assert login(web_port, "alice", alice_password) == 200
    store = Store(str(server.data_dir))
    try:
        stored = store.get_client(alice["id"]).web_password
    finally:
        store.close()
    assert stored and alice_password not in stored  # hashed, never in clear

    npc_client(conf=support.render_npc_conf(server.bridge_addr, mallory["vkey"], web_username="admin",
                                            web_password="mallory takes over the admin"))
    support.until(lambda: "already used by the admin" in server.log_text(), 30, "refusal logged")
    assert login(web_port, "admin", "mallory takes over the admin") == 401
    assert login(web_port, "admin", PASSWORD) == 200
