# -*- test-case-name: test.test_support -*-
"""
Fixtures for end-to-end tests with real processes on loopback.

  - C{spawn(argv, name=None, env=None, cwd=None) -> Proc}: any process, log in tmp.
  - C{sshd}: a real OpenSSH server (L{support.SSHD}), skipped when not installed.
  - C{http_backend}: C{python -m http.server} with known files (L{support.HTTPBackend}).
  - C{nps_server(public_vkey=None, extra=None, *, use_twistd=False, start=True,
    env=None) -> NpsServer}: a real nps with its own conf and data dir.
  - C{npc_client(*args, conf=None, env=None, name="npc") -> Proc}: a real npc.

Every process started here is stopped when its test ends (and, as a last
resort, at the end of the session); when a test fails, the tail of each
process log is attached to the failure report.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

try:  # test/ imported as a package ...
    from . import support  # type: ignore[import-not-found]
except ImportError:  # ... or as a rootdir on sys.path (no __init__.py)
    import support  # type: ignore[no-redef]

Proc = support.Proc


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        seen = set()
        for proc in getattr(item, "_support_procs", []):
            if proc.log_path in seen:  # a restarted server appends to the same log
                continue
            seen.add(proc.log_path)
            report.sections.append(
                (f"log of {proc.name} (pid {proc.pid}, rc {proc.poll()}): {proc.log_path}",
                 "$ " + " ".join(proc.argv) + "\n" + proc.log_tail(60))
            )


def _track(request: pytest.FixtureRequest, proc: Proc) -> Proc:
    procs = getattr(request.node, "_support_procs", None)
    if procs is None:
        procs = []
        setattr(request.node, "_support_procs", procs)
    procs.append(proc)
    return proc


@pytest.fixture(scope="session", autouse=True)
def _stop_leftover_processes() -> Iterator[None]:
    """
    Last line of defence: nothing started through support.Proc outlives the session.
    """
    yield
    support.stop_all()


@pytest.fixture
def spawn(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """
    Factory: C{spawn(argv, name=None, env=None, cwd=None) -> Proc}, logging to
    C{tmp_path/NAME-N.log}; all are stopped at teardown.
    """
    started: list[Proc] = []
    counter = itertools.count()

    def _spawn(
        argv: Sequence[str],
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
    ) -> Proc:
        label = name or Path(str(argv[0])).name
        proc = Proc(argv, tmp_path / f"{label}-{next(counter)}.log", env=env, cwd=cwd, name=label)
        started.append(_track(request, proc))
        return proc

    yield _spawn
    for proc in reversed(started):
        proc.stop()


@pytest.fixture
def sshd(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """
    A real OpenSSH server on 127.0.0.1 (C{.port}, C{.ssh_cmd(port=None,
    host="127.0.0.1")}, C{.client_key}, C{.log_path}).
    """
    try:
        server = support.SSHD(tmp_path_factory.mktemp("sshd"))
    except support.Unavailable as e:
        pytest.skip(str(e))
    server.start()
    assert server.proc is not None
    _track(request, server.proc)
    yield server
    server.stop()


@pytest.fixture
def http_backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """
    C{python -m http.server} on 127.0.0.1 (C{.port}, C{.dir}, C{.files},
    C{.url(path, port=None)}; unpacks as C{port, dir}).
    """
    backend = support.HTTPBackend(tmp_path_factory.mktemp("http"))
    backend.start()
    assert backend.proc is not None
    _track(request, backend.proc)
    yield backend
    backend.stop()


@pytest.fixture
def nps_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Any]]:
    """
    Factory: C{nps_server(public_vkey=None, extra=None, *, use_twistd=False,
    start=True, env=None) -> NpsServer}. The server is started and its bridge
    port is open unless C{start=False} (then call C{.start()} yourself, e.g.
    after C{.add_client()}/C{.add_tunnel()}); all are stopped at teardown.
    """
    servers: list[Any] = []

    def _make(
        public_vkey: str | None = None,
        extra: Mapping[str, object] | None = None,
        *,
        use_twistd: bool = False,
        start: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> Any:
        server = support.NpsServer(
            tmp_path_factory.mktemp("nps"), public_vkey, extra, use_twistd=use_twistd, env=env,
            on_proc=lambda proc: _track(request, proc),
        )
        servers.append(server)
        if start:
            server.start()
        return server

    yield _make
    for server in reversed(servers):
        server.stop()


@pytest.fixture
def npc_client(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Proc]]:
    """
    Factory: C{npc_client(*args, conf=None, env=None, name="npc") -> Proc}.
    With C{conf} (npc.conf text, see L{support.render_npc_conf}) it runs
    C{npc *args -config=FILE}; otherwise C{npc *args}
    (e.g. C{"-server=127.0.0.1:PORT", "-vkey=KEY", "-type=tcp"}).
    """
    started: list[Proc] = []

    def _make(
        *args: str,
        conf: str | None = None,
        env: Mapping[str, str] | None = None,
        name: str = "npc",
    ) -> Proc:
        proc = support.start_npc(tmp_path_factory.mktemp(name), *args, conf=conf, env=env, name=name)
        started.append(_track(request, proc))
        return proc

    yield _make
    for proc in reversed(started):
        proc.stop()
