"""
The web admin in a real headless Debian chromium (playwright drives /usr/bin/chromium; no
downloaded browser): log in, add a client, copy its npc command, run that npc, watch it turn
online without a reload, add a tcp tunnel, use it, watch its traffic counter rise.

Screenshots go to the test's temp dir; with NPS_UPDATE_SCREENSHOTS=1 also to docs/.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import urllib.request
from pathlib import Path
from typing import Any, Callable

import pytest

try:
    from . import support  # type: ignore[import-not-found]
except ImportError:
    import support  # type: ignore[no-redef]

CHROMIUM = "/usr/bin/chromium"
PASSWORD = "browser-test admin password 42"
DOCS = Path(__file__).resolve().parent.parent / "docs"

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium (apt-get install chromium)")


def _launch(playwright: Any, profile: Path) -> Any:
    return playwright.chromium.launch_persistent_context(
        str(profile), executable_path=CHROMIUM, headless=True,
        args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        viewport={"width": 1280, "height": 800}, locale="en-US")


def _shot(page: Any, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("NPS_UPDATE_SCREENSHOTS") == "1":
        shutil.copy(path, DOCS / name)


def test_browser_add_client_run_npc_add_tunnel_see_traffic(
    nps_server: Callable[..., Any], npc_client: Callable[..., Any], http_backend: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    web_port = support.free_port()
    tunnel_port = support.free_port()
    server = nps_server(extra={"web_port": web_port, "web_ip": "127.0.0.1", "web_password": PASSWORD})
    support.wait_for_port("127.0.0.1", web_port, 30, proc=server.proc)
    base = f"http://127.0.0.1:{web_port}/"
    with sync_playwright() as playwright:
        context = _launch(playwright, tmp_path / "profile")
        try:
            context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base.rstrip("/"))
            page = context.new_page()
            page.goto(base)
            expect(page.locator("#login-form")).to_be_visible()
            _shot(page, tmp_path, "admin-login.png")
            page.fill("#login-form input[name=password]", "wrong password")
            page.click("#login-form button[type=submit]")
            expect(page.locator("#login-error")).to_contain_text("wrong")
            page.fill("#login-form input[name=password]", PASSWORD)
            page.click("#login-form button[type=submit]")
            expect(page.locator("#nav")).to_be_visible()
            expect(page.locator("#live.on")).to_be_attached(timeout=15000)

            # add a client; the page shows the exact npc command; copy it
            page.click("a[href='#clients']")
            page.fill("#add-client input[name=remark]", "office-pc")
            page.click("#add-client button[type=submit]")
            command_box = page.locator("[data-testid=npc-command]")
            expect(command_box).to_contain_text("-type=tcp")
            page.click("[data-action=copy]")
            expect(page.locator("[data-action=copy]")).to_have_text("Copied")
            copied = page.evaluate("navigator.clipboard.readText()")
            assert copied == command_box.inner_text()
            assert re.fullmatch(r"npc -server=127\.0\.0\.1:\d+ -vkey=\w{24} -type=tcp", copied), copied
            status = page.locator("[data-client-status]").first
            expect(status).to_have_attribute("data-online", "0")

            # run exactly that command; the status turns online without a reload
            argv = shlex.split(copied)
            assert argv[0] == "npc"
            npc_client(*argv[1:])
            expect(status).to_have_attribute("data-online", "1", timeout=30000)
            expect(status).to_have_text("online")
            page.wait_for_function("performance.getEntriesByType('navigation').length === 1")
            _shot(page, tmp_path, "admin-clients.png")

            # add a tcp tunnel to the HTTP backend and use it
            page.click("a[href='#tunnels']")
            form = page.locator("#add-tunnel")
            form.locator("select[name=mode]").select_option("tcp")
            form.locator("input[name=server_port]").fill(str(tunnel_port))
            form.locator("input[name=server_ip]").fill("127.0.0.1")
            form.locator("input[name=targets]").fill(f"127.0.0.1:{http_backend.port}")
            form.locator("input[name=remark]").fill("web")
            form.locator("button[type=submit]").click()
            row = page.locator("[data-tunnel-row]").first
            expect(row).to_contain_text(f"127.0.0.1:{tunnel_port}")
            traffic = row.locator("[data-tunnel-in]")
            expect(traffic).to_have_text("0 B")
            body = support.until(lambda: urllib.request.urlopen(
                f"http://127.0.0.1:{tunnel_port}/hello.txt", timeout=5).read(), 30, "HTTP through the new tunnel")
            assert body
            # the live counter rises (pushed over the WebSocket, no reload)
            expect(traffic).not_to_have_text("0 B", timeout=15000)
            _shot(page, tmp_path, "admin-tunnels.png")

            # disable the tunnel from the page: its port closes at once; enable it again
            row.locator("[data-action=toggle-tunnel]").click()
            expect(row).to_contain_text("disabled")
            support.until(lambda: not support.port_open("127.0.0.1", tunnel_port), 15, "port closed after disable")
            page.locator("[data-tunnel-row] [data-action=toggle-tunnel]").first.click()
            support.until(lambda: urllib.request.urlopen(
                f"http://127.0.0.1:{tunnel_port}/hello.txt", timeout=5).read(), 30, "tunnel enabled again")

            page.click("a[href='#dashboard']")
            expect(page.locator("[data-stat=online]")).to_have_text("1")
            for _ in range(6):  # some traffic over a few live samples, for the chart (screenshot only)
                urllib.request.urlopen(f"http://127.0.0.1:{tunnel_port}/hello.txt", timeout=5).read()
                page.wait_for_timeout(1000)
            _shot(page, tmp_path, "admin-dashboard.png")

            # Chinese
            page.select_option("#lang", "zh")
            page.click("a[href='#clients']")
            expect(page.locator("[data-client-status]").first).to_have_text("在线")
            _shot(page, tmp_path, "admin-clients-zh.png")
        finally:
            context.close()
