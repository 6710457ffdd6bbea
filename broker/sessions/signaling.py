"""A session's part in the insider-threat signals (broker.signals): it reports what happens
in it, and acts on a signal as its policy's `on_signal` says.

Actions: `log` (the default: the audit event only), `review` or `deny` (from then on, what the
policy would allow in this session needs review, or is denied; what it denies stays denied),
`end` (the session is closed), `lock:DURATION` (closed, and the user may open no session on
the target until the lock ends).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from broker.config import Policy, Target
from broker.durations import parse_duration
from broker.policy.decision import Decision
from broker.policy.shell import parse_command_line

if TYPE_CHECKING:
    from broker.session_context import ConnectionContext
    from broker.signals import Signal, SignalWatch

log = logging.getLogger("hoop.broker.signals")


class SessionSignals:
    def __init__(
        self,
        watch: SignalWatch | None,
        ctx: ConnectionContext,
        target: Target,
        session_id: str,
        on_signal: dict[str, str],
    ) -> None:
        self._watch = watch
        self._ctx = ctx
        self._target = target
        self._session = session_id
        self._on_signal = on_signal
        self.escalation: tuple[str, str] | None = None  # (review|deny, the signal's name)
        self._say: Callable[[str], None] = lambda _text: None
        self._end: Callable[[str], None] | None = None
        self._long: asyncio.Future[None] | None = None

    @property
    def enabled(self) -> bool:
        return self._watch is not None and self._watch.settings.enabled

    def policy(self, policy: Policy) -> Policy:
        """POLICY as it applies after the signals so far: stricter once one asked for it."""
        if self.escalation is None:
            return policy
        approvers = list(self._target.access_approvers) or list(policy.unknown_approvers)
        action, signal = self.escalation
        return policy.escalated(action, approvers, because=f"signal {signal}")

    def _who(self) -> dict[str, Any]:
        return {
            "user": self._ctx.user,
            "groups": self._ctx.groups,
            "target": self._target.name,
            "session": self._session,
        }

    async def _guarded(self, report: Any) -> None:
        """Run a report to the watch; a failure is logged, never the session's end."""
        if not self.enabled:
            return
        try:
            fired = await report
            for signal in fired or ():
                await self._act(signal)
        except Exception:
            log.exception("session %s: signals could not be judged", self._session)

    # -- what happens in the session ------------------------------------------------------
    async def started(
        self, say: Callable[[str], None] | None, end: Callable[[str], None] | None
    ) -> None:
        """The session has started; SAY tells its user, END closes it (interactive sessions)."""
        if say is not None:
            self._say = say
        self._end = end
        if not self.enabled:
            return
        assert self._watch is not None
        await self._guarded(self._watch.session_started(**self._who()))
        if end is not None:
            with contextlib.suppress(Exception):
                usual = await self._watch.usual_length(self._ctx.user, self._target.name)
                if usual is not None:
                    self._long = asyncio.ensure_future(self._watch_length(usual))

    async def _watch_length(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        assert self._watch is not None
        fired = self._watch.fire("long-session", **self._who(), details={"seconds": round(seconds)})

        async def one() -> list[Signal]:
            return [await fired]

        await self._guarded(one())

    async def decided(
        self,
        event_type: str,
        subject: str,
        text: str,
        decision: Decision,
        extra: dict[str, object],
        approver: str | None,
    ) -> None:
        """An audited command or statement: what ran, what it read, what was refused."""
        if not self.enabled:
            return
        assert self._watch is not None
        if event_type == "command":
            programs = decision.programs
            if programs is None:  # judged elsewhere: read the line here
                programs = tuple(c.name for c in parse_command_line(text).commands)
            await self._guarded(self._watch.ran(**self._who(), kind="program", values=programs))
        elif event_type == "query":
            kind = extra.get("kind")
            if isinstance(kind, str):
                await self._guarded(self._watch.ran(**self._who(), kind="statement", values=[kind]))
            rows = extra.get("rows")
            if isinstance(rows, int) and not isinstance(rows, bool):
                await self._guarded(self._watch.rows_read(**self._who(), rows=rows))
        elif event_type.endswith(".blocked") and (decision.action == "deny" or approver):
            await self._guarded(self._watch.denied(**self._who()))

    async def ended(self, seconds: float) -> None:
        if self._long is not None:
            self._long.cancel()
            with contextlib.suppress(BaseException):
                await self._long
        if self.enabled:
            assert self._watch is not None
            with contextlib.suppress(Exception):
                await self._watch.session_ended(
                    user=self._ctx.user,
                    target=self._target.name,
                    session=self._session,
                    seconds=seconds,
                )

    # -- acting ---------------------------------------------------------------------------
    async def _act(self, signal: Signal) -> None:
        action = self._on_signal.get(signal.name, "log")
        if action == "log":
            return
        assert self._watch is not None
        await self._watch.noted(signal, action)
        name = self._target.name
        if action in ("review", "deny"):
            if self.escalation is None or action == "deny":
                self.escalation = (action, signal.name)
            what = "needs approval" if action == "review" else "is refused"
            self._say(f"signal {signal.name}: from now on every command on {name} {what}")
            return
        reason = f"signal {signal.name}"
        if action.startswith("lock:"):
            until = await self._watch.lock(self._ctx.user, name, parse_duration(action[5:]), signal)
            reason += f": you may not open sessions on {name} until {_clock_time(until)}"
        # end, lock: close the session (a one-off command has finished by now anyway).
        self.escalation = ("deny", signal.name)
        if self._end is not None:
            self._end(f"{reason}; this session is closed")


def _clock_time(epoch: float) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))
