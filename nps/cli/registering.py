"""What C{npc register} shares across protocols: reading its flags and running one registration."""

from __future__ import annotations

import sys
from typing import Any, Callable, Iterable, TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

_T = TypeVar("_T")


def read_register_flags(args: Iterable[str], values: dict[str, str], command: str) -> bool:
    """
    Fill C{values} from C{-name=value} or C{-name value} flags; only its keys are accepted.

    @param command: how the command is named in the error (C{"npc register"}).
    @return: False (after printing why to stderr) on an unknown argument.
    """
    words = iter(args)
    for arg in words:
        name, equals, value = arg.lstrip("-").partition("=")
        if not arg.startswith("-") or name not in values:
            print(f"npc: unknown argument {arg!r} for {command} (takes -server, -vkey, -time)", file=sys.stderr)
            return False
        values[name] = value if equals else next(words, "")
    return True


def run_registration(server: str, start: Callable[[Any], Deferred[_T]], done: Callable[[_T], str]) -> int:
    """
    Run C{start(reactor)} under a fresh reactor and report how it went.

    @param server: the server's address, for the messages.
    @param done: makes the success line from the registration's result.
    @return: the exit status: 0 when registered, 1 when it failed.
    """
    from twisted.internet import task

    outcome: list[int] = []

    def run(reactor: Any) -> Deferred[None]:
        def ok(answer: _T) -> None:
            print(done(answer))
            outcome.append(0)

        def failed(failure: Failure) -> None:
            print(f"npc: register on {server} failed: {failure.getErrorMessage()}", file=sys.stderr)
            outcome.append(1)

        return start(reactor).addCallbacks(ok, failed)

    try:
        task.react(run)
    except SystemExit:
        pass
    return outcome[0] if outcome else 1
