"""What a task needs to act: the catalog, the inventory, and one Target per ``-H`` host.

Several hosts run in parallel (threads); each host's output is buffered and printed as a block
when it finishes, then a per-host result table follows; the exit code is non-zero if any failed.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from invoke import Context, Exit

from .catalog import Catalog, load_catalog
from .errors import GpumodError, SettingInvalid
from .host import connect
from .inventory import HostSpec, Inventory, load_inventory
from .paths import inventory_path, project_root
from .target import Target


def catalog(spec: HostSpec | None = None) -> Catalog:
    """The catalog a host runs: its own (``catalog:`` in the inventory, a directory holding
    presets/ and modes/, relative to the project root) or, without one, the project's."""
    return load_catalog(catalog_dir(spec))


def catalog_dir(spec: HostSpec | None = None) -> str:
    root = project_root()
    if spec is None or not spec.catalog:
        return root
    from pathlib import Path

    d = Path(root) / spec.catalog
    if not (d / "presets").is_dir() or not (d / "modes").is_dir():
        raise SettingInvalid(f"host {spec.name}: catalog: {spec.catalog} ({d}) must be a directory holding presets/ and modes/")
    return str(d)


def inventory() -> Inventory:
    return load_inventory(inventory_path(project_root()))


def cli_settings(c: Context) -> dict[str, Any]:
    try:
        g = c.config.gpumod
        return {"hosts": g.hosts, "ssh_config": g.ssh_config, "connect_kwargs": dict(g.connect_kwargs)}
    except (AttributeError, KeyError):
        return {"hosts": "", "ssh_config": "", "connect_kwargs": {}}


def host_specs(c: Context) -> list[HostSpec]:
    return inventory().resolve(cli_settings(c)["hosts"])


@contextmanager
def open_target(c: Context, spec: HostSpec, cat: Catalog | None = None) -> Iterator[Target]:
    settings = cli_settings(c)
    fabric_config = None
    if not spec.is_local:
        from fabric import Config

        fabric_config = Config(runtime_ssh_path=settings["ssh_config"] or None)
    host = connect(spec, fabric_config=fabric_config, connect_kwargs=settings["connect_kwargs"])
    try:
        yield Target(spec=spec, host=host, catalog=cat or catalog(spec), project_root=project_root())
    finally:
        host.close()


@dataclass
class HostResult:
    host: str
    ok: bool
    seconds: float
    summary: str
    output: str = ""
    exit_code: int = 0


def for_each_host(c: Context, fn: Callable[[Target, Any], str], *, as_json: bool = False, header: bool = True) -> None:
    """Run ``fn(target, console)`` on every -H host. ``fn`` returns a one-line summary."""
    from .ui import make_console, print_error, results_table

    specs = host_specs(c)
    cats: dict[str, Catalog] = {}
    for spec in specs:  # every catalog is checked before any host is contacted
        d = catalog_dir(spec)
        if d not in cats:
            cats[d] = load_catalog(d)

    def cat_of(spec: HostSpec) -> Catalog:
        return cats[catalog_dir(spec)]

    if len(specs) == 1:
        console = make_console(stderr=as_json)
        with open_target(c, specs[0], cat_of(specs[0])) as t:
            if header:
                console.print(f"[dim]{t.header()}[/dim]")
            fn(t, console)
        return

    def one(spec: HostSpec) -> HostResult:
        buf = io.StringIO()
        console = make_console(file=buf, stderr=False)
        t0 = time.perf_counter()
        try:
            with open_target(c, spec, cat_of(spec)) as t:
                if header:
                    console.print(f"[dim]{t.header()}[/dim]")
                summary = fn(t, console) or "ok"
            return HostResult(spec.name, True, time.perf_counter() - t0, summary, buf.getvalue())
        except GpumodError as exc:
            print_error(exc, console=console)
            return HostResult(spec.name, False, time.perf_counter() - t0, str(exc).splitlines()[0][:120], buf.getvalue(), exc.exit_code)
        except Exception as exc:  # one host's crash must not stop the others  # noqa: BLE001
            console.print(f"[red]{type(exc).__name__}: {exc}[/red]")
            return HostResult(spec.name, False, time.perf_counter() - t0, f"{type(exc).__name__}: {exc}"[:120], buf.getvalue(), 1)

    out = make_console(stderr=as_json)
    results: list[HostResult] = []
    with ThreadPoolExecutor(max_workers=len(specs)) as pool:
        for r in pool.map(one, specs):
            results.append(r)
    for r in results:
        out.rule(f"[bold]{r.host}")
        out.file.write(r.output)
        out.file.flush()
    out.print(results_table(results))
    if not all(r.ok for r in results):
        raise Exit(code=max(r.exit_code for r in results if not r.ok) or 1)
