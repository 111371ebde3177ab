"""A mode switch: the one run path (``pipeline.run``) with a ``SwitchTo`` operation."""

from __future__ import annotations

from collections.abc import Callable

from .execute import Event
from .observed import Observed
from .pipeline import Outcome, SwitchTo, policy_for, prepare, run
from .plan import Plan, Policy
from .target import Target

SwitchOutcome = Outcome

__all__ = ["SwitchOutcome", "make_plan", "policy_for", "switch"]


def make_plan(target: Target, mode_id: str, policy: Policy | None = None) -> tuple[Plan, Observed]:
    return prepare(target, SwitchTo(mode_id), policy)


def switch(target: Target, mode_id: str, *, dry_run: bool = False, wait_lock: bool = True, quiesce: bool = True,
           rollback: bool = False, on_event: Event | None = None, on_wait: Callable[[str], None] | None = None,
           on_plan: Callable[[Plan], None] | None = None) -> Outcome:
    return run(target, SwitchTo(mode_id), dry_run=dry_run, wait_lock=wait_lock, quiesce=quiesce, rollback=rollback,
               on_event=on_event, on_wait=on_wait, on_plan=on_plan)
