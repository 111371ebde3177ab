"""Planning: observed facts and an operation in, an ordered list of steps out. Pure: nothing in
this package does I/O or imports host code.

    switch.py      plan_switch: partition, make_room, assemble
    service.py     plan_service: service.start|stop|restart|sleep|wake
    refresh.py     plan_refresh: restart running services whose unit changed (the daemon's reload)
    sleep_level.py the L1 -> L2 rule
    fitcheck.py    VRAM fit with alternatives, RAM preflight
    unitfiles.py   unit installs, daemon-reload, stale-unit restarts
    order.py       dependency order
    steps.py       the step values; result.py the Plan; policy.py the host's policy
"""

from __future__ import annotations

from .order import topo_order
from .policy import Policy
from .refresh import plan_refresh
from .result import GpuPlan, Plan
from .service import ACTIONS, ServiceOp, plan_service
from .steps import (
                    ARRIVING,
                    LEAVING,
                    AwaitHealthy,
                    DaemonReload,
                    InstallUnit,
                    Quiesce,
                    Record,
                    ResetFailed,
                    RouterLoad,
                    RouterUnload,
                    Sleep,
                    Start,
                    Step,
                    Stop,
                    WaitRelease,
                    Wake,
)
from .switch import plan_switch

__all__ = [
    "ACTIONS", "ARRIVING", "LEAVING", "AwaitHealthy", "DaemonReload", "InstallUnit", "GpuPlan", "Plan", "Policy", "Quiesce", "Record",
    "ResetFailed", "RouterLoad", "RouterUnload", "ServiceOp", "Sleep", "Start", "Step", "Stop", "WaitRelease", "Wake",
    "plan_refresh", "plan_service", "plan_switch", "topo_order",
]
