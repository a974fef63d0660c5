# -*- test-case-name: test.test_tap -*-
"""npc.conf to tunnels: accounts, plugin modes; and the twistd option parsers."""
from __future__ import annotations

from pathlib import Path

import pytest
from twisted.python import usage

from nps.accounts import accounts_for
from nps.config import ConfigError, load_client_config
from nps.tap.client import Options, tunnels_from_config

CONF = """\
[common]
server_addr=127.0.0.1:8024
vkey=k
basic_username=alice
basic_password=wonder=land
[proxy]
mode=socks5
server_port=19009
multi_account=accounts.conf
[web]
mode=tcp
server_port=19010
target_addr=127.0.0.1:80
"""


def test_accounts_travel_with_the_tunnels(tmp_path: Path) -> None:
    """[common] basic_* goes to every tunnel; a socks5 multi_account file is read next to npc.conf."""
    (tmp_path / "accounts.conf").write_text("# users\nbob=secret\ncarol = x=y\n")
    conf = tmp_path / "npc.conf"
    conf.write_text(CONF)
    tunnels = {t.remark: t for t in tunnels_from_config(load_client_config(str(conf), modes={"tcp", "socks5"}))}
    assert accounts_for(tunnels["proxy"]) == {"alice": "wonder=land", "bob": "secret", "carol": "x=y"}
    assert accounts_for(tunnels["web"]) == {"alice": "wonder=land"}


def test_missing_accounts_file_is_a_config_error(tmp_path: Path) -> None:
    """A multi_account file that cannot be read stops start-up naming the key and the file."""
    conf = tmp_path / "npc.conf"
    conf.write_text(CONF)
    with pytest.raises(ConfigError) as caught:
        tunnels_from_config(load_client_config(str(conf), modes={"tcp", "socks5"}))
    assert caught.value.key == "multi_account"
    assert "accounts.conf" in str(caught.value)


def test_plugin_modes_are_accepted_only_when_loaded(tmp_path: Path) -> None:
    """A mode name outside NPS's list is valid when a plugin provides it, an error otherwise."""
    conf = tmp_path / "npc.conf"
    conf.write_text("[common]\nserver_addr=127.0.0.1:8024\nvkey=k\n[x]\nmode=echo\nserver_port=19011\n")
    config = load_client_config(str(conf), modes={"tcp", "echo"})
    assert [t.mode for t in config.tunnels] == ["echo"]
    assert not any("echo" in w for w in config.warnings)
    with pytest.raises(ConfigError) as caught:
        load_client_config(str(conf), modes={"tcp"})
    assert caught.value.key == "mode"


def test_npc_options_need_server_and_vkey() -> None:
    """npc without a server address or vkey is a usage error that says which is missing."""
    with pytest.raises(usage.UsageError, match="vkey"):
        Options().parseOptions(["--server", "127.0.0.1:8024"])
    with pytest.raises(usage.UsageError, match="server"):
        Options().parseOptions(["--vkey", "k"])
