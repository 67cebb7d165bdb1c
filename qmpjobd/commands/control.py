"""The ``x-qmpjobd-*`` extension commands (control for people who test
management layers), and the wrapper that tells the job history which
command, from which monitor, caused a status change.

Every one is listed in query-qmp-schema with the ``unstable`` feature.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Coroutine, Generator, Iterable
from contextlib import AbstractContextManager
from typing import Any

from ..control import Control
from . import Handler, SessionControl


def control_commands(control: Control) -> list[tuple[str, Handler]]:
    holds = control.holds
    faults = control.faults

    def hold(session: SessionControl, args: dict[str, Any]) -> Any:
        added = holds.add(args["job"], status=args.get("status"), offset=args.get("offset"))
        return {"hold": added.number}

    def release(session: SessionControl, args: dict[str, Any]) -> Any:
        holds.release(args["job"], args.get("hold"))
        return {}

    def step(session: SessionControl, args: dict[str, Any]) -> Any:
        return {"hold": holds.step(args["job"], args["bytes"]).number}

    def query_holds(session: SessionControl, args: dict[str, Any]) -> Any:
        return holds.query()

    def fault(session: SessionControl, args: dict[str, Any]) -> Any:
        added = faults.add(
            args["node"],
            args["op"],
            errno=args.get("errno", 5),
            offset=args.get("offset"),
            nth=args.get("nth", 1),
            always=args.get("always", False),
        )
        return {"fault": added.number}

    def clear_faults(session: SessionControl, args: dict[str, Any]) -> Any:
        faults.clear(args.get("node"), args.get("fault"))
        return {}

    def query_faults(session: SessionControl, args: dict[str, Any]) -> Any:
        return faults.query()

    def query_history(session: SessionControl, args: dict[str, Any]) -> Any:
        return control.history.query(args["job"])

    async def advance_clock(session: SessionControl, args: dict[str, Any]) -> Any:
        return await control.clock.advance(args["ns"])

    def query_clock(session: SessionControl, args: dict[str, Any]) -> Any:
        return control.clock.query()

    async def guest_write(session: SessionControl, args: dict[str, Any]) -> Any:
        await control.guest.write(
            args["node"], args["offset"], args["length"], args.get("pattern", 0xA5)
        )
        return {}

    return [
        ("x-qmpjobd-hold", hold),
        ("x-qmpjobd-release", release),
        ("x-qmpjobd-step", step),
        ("x-qmpjobd-query-holds", query_holds),
        ("x-qmpjobd-fault", fault),
        ("x-qmpjobd-clear-faults", clear_faults),
        ("x-qmpjobd-query-faults", query_faults),
        ("x-qmpjobd-query-history", query_history),
        ("x-qmpjobd-guest-write", guest_write),
        ("x-qmpjobd-advance-clock", advance_clock),
        ("x-qmpjobd-query-clock", query_clock),
    ]


def attributed(
    control: Control, commands: Iterable[tuple[str, Handler]]
) -> list[tuple[str, Handler]]:
    """Wrap every handler so the job history knows what caused a change.

    A synchronous handler is marked while it runs; an async one while each of
    its steps runs (not while it waits: jobs then act on their own).
    """
    return [(name, _attributed(control, name, handler)) for name, handler in commands]


def settled(control: Control, commands: Iterable[tuple[str, Handler]]) -> list[tuple[str, Handler]]:
    """Under the virtual clock: every command settles the daemon before its
    reply, so the next request (of any monitor) finds it settled."""
    return [(name, _settled(control, handler)) for name, handler in commands]


def _settled(control: Control, handler: Handler) -> Handler:
    @functools.wraps(handler)
    def run(session: SessionControl, args: dict[str, Any]) -> Any:
        return _settle_after(control, handler(session, args))

    return run


async def _settle_after(control: Control, result: Any) -> Any:
    if type(result) is types.CoroutineType:
        result = await control.clock.wait_command(result)
    await control.clock.settle()
    return result


def _attributed(control: Control, name: str, handler: Handler) -> Handler:
    history = control.history
    acts_on_jobs = _acts_on_jobs(name)

    @functools.wraps(handler)
    def run(session: SessionControl, args: dict[str, Any]) -> Any:
        monitor = getattr(session, "number", None)
        outer = history.enter(name, monitor)
        try:
            result = handler(session, args)
        finally:
            history.leave(outer)
        if acts_on_jobs:
            job = args.get("id", args.get("device", args.get("job")))
            if isinstance(job, str):
                history.requested(job, name, monitor)
        if type(result) is types.CoroutineType:
            return _marked(result, functools.partial(history.cause, name, monitor))
        return result

    return run


Mark = Callable[[], AbstractContextManager[None]]


def _acts_on_jobs(command: str) -> bool:
    """Commands that ask a job for a change it makes itself later."""
    if command in ("x-qmpjobd-release", "x-qmpjobd-step"):
        return True
    return command.startswith(("job-", "block-job-")) and command != "block-job-set-speed"


async def _marked(coro: Coroutine[Any, Any, Any], mark: Mark) -> Any:
    return await _stepped(coro, mark)


@types.coroutine
def _stepped(coro: Coroutine[Any, Any, Any], mark: Mark) -> Generator[Any, Any, Any]:
    """Run ``coro`` step by step, each step inside ``mark()``."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            with mark():
                yielded = coro.throw(error) if error is not None else coro.send(value)
        except StopIteration as stop:
            return stop.value
        try:
            value = yield yielded
            error = None
        except BaseException as exc:
            value = None
            error = exc
