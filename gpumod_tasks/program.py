"""The ``gpumod`` / ``inv`` program: Invoke's CLI with Fabric's host flags.

It keeps every core flag of Invoke's ``inv`` and adds the ones Fabric's ``fab`` adds (``-H``,
``-i``, ``-S``, ``-t``, ``--prompt-for-login-password``, ``--prompt-for-passphrase``,
``--list-agent-keys``) without importing Fabric: paramiko costs a few hundred ms to import, so
it is loaded only when a remote host is actually targeted.

The namespace is the project's ``tasks.py`` when one is found from the working directory (as
``inv`` always does), else the installed ``gpumod_tasks.tasks`` namespace.  This is also the one
place where gpumod's errors become a red message and an exit code.

``inv TASK --help`` (or ``-h``) prints the task's help for every task: Invoke's parser lets a
task's required positional argument eat ``--help`` as its value (``inv mode.switch --help`` would
switch to a mode named "--help"), so each task's parser context here also knows ``--help``/``-h``
as its own flag, which wins over the positional.
"""

from __future__ import annotations

import sys
import types
from typing import Any


def _import_invoke_light() -> None:
    """Import Invoke without two modules it loads for features gpumod's commands never reach:
    ``unittest.mock`` (with asyncio and ssl) for ``MockContext``, and its vendored pure-Python
    YAML for ``invoke.yaml`` config files (~65 ms of every command together).  While Invoke is
    imported, placeholders stand in whose one entry point (``Mock``, ``safe_load``) imports the
    real module on first call; they are gone from ``sys.modules`` afterwards, so any later import
    of those modules is the real one."""
    if "invoke" in sys.modules:
        return

    def Mock(*args: Any, **kwargs: Any) -> Any:  # noqa: N802 - the name invoke.context imports
        import unittest.mock

        return unittest.mock.Mock(*args, **kwargs)

    def safe_load(stream: Any) -> Any:
        import importlib

        return importlib.import_module("invoke.vendor.yaml").safe_load(stream)

    stubs = {"unittest.mock": {"Mock": Mock}, "invoke.vendor.yaml": {"safe_load": safe_load}}
    placed = {}
    for name, attrs in stubs.items():
        if name in sys.modules:
            continue
        stub = types.ModuleType(name, "a placeholder while Invoke is imported (gpumod_tasks.program)")
        stub.__dict__.update(attrs)
        placed[name] = sys.modules[name] = stub
    try:
        import invoke  # noqa: F401
    finally:
        for name, stub in placed.items():
            if sys.modules.get(name) is stub:
                del sys.modules[name]


_import_invoke_light()

from invoke import Argument, Collection, Exit, Program  # noqa: E402
from invoke.parser import Parser, ParserContext  # noqa: E402

from . import __version__  # noqa: E402

HELP_ARG = "help"

# Third-party modules a task imports lazily -> the extra that installs them.  A task that needs one
# that is missing says in one line what to install instead of dying with a traceback.
EXTRAS = {
    "starlette": "router", "uvicorn": "router", "httptools": "router", "prometheus_client": "router",
    "mcp": "mcp",
    "gguf": "models", "numpy": "models", "huggingface_hub": "models",
}


def missing_extra_message(exc: ModuleNotFoundError, task: str = "") -> str | None:
    """The one-line hint for a missing optional dependency; None when ``exc`` is not one of them."""
    top = (exc.name or "").split(".")[0]
    extra = EXTRAS.get(top)
    if extra is None:
        return None
    who = f"{task} needs" if task else "this needs"
    return f"error: {who} the Python package '{top}' (extra '{extra}'), which is not installed: pip install -e '.[{extra}]'"


def bad_number_message(exc: ValueError, argv: list[str]) -> str:
    """``--lines abc``: name the flag and what it takes instead of a ValueError traceback."""
    import re

    m = re.search(r"(?:invalid literal for (int)\(\) with base 10|could not convert string to (float)): '(.*)'$", str(exc))
    if m is None:
        return f"error: {exc}"
    kind, value = m.group(1) or m.group(2), m.group(3)
    flag = ""
    for prev, tok in zip(["", *argv], argv):
        if tok == value and prev.startswith("-"):
            flag = prev
        elif tok.startswith("-") and tok.endswith(f"={value}"):
            flag = tok.partition("=")[0]
    what = "a whole number" if kind == "int" else "a number"
    return f"error: {flag or 'a flag'} takes {what}, not {value!r}"


class _TaskContext(ParserContext):
    """A task's parser context that also takes ``--help``/``-h``; given them, its positionals are not required."""

    @property
    def missing_positional_args(self) -> list[Argument]:
        helparg = self.args.get(HELP_ARG)
        if helparg is not None and helparg.value:
            return []
        return super().missing_positional_args


def _with_help_flag(ctx: ParserContext) -> ParserContext:
    if HELP_ARG in ctx.args:  # a task with its own --help argument keeps it
        return ctx
    names = tuple(n for n in (HELP_ARG, "h") if ("--" if len(n) > 1 else "-") + n not in ctx.flags)
    return _TaskContext(name=ctx.name, aliases=ctx.aliases,
                        args=[*ctx.args.values(), Argument(names=names, kind=bool, help="Show this task's help.")])


class Gpumod(Program):
    def core_args(self) -> list[Argument]:
        return [
            *super().core_args(),
            Argument(names=("H", "hosts"), help="Comma-separated inventory host names, groups or ssh targets (user@host:port) to run against."),
            Argument(names=("i", "identity"), kind=list, help="Path to runtime SSH identity (key) file. May be given multiple times."),
            Argument(names=("list-agent-keys",), kind=bool, help="Display ssh-agent key list, and exit."),
            Argument(names=("prompt-for-login-password",), kind=bool, help="Request an upfront SSH-auth password prompt."),
            Argument(names=("prompt-for-passphrase",), kind=bool, help="Request an upfront SSH key passphrase prompt."),
            Argument(names=("S", "ssh-config"), help="Path to runtime SSH config file."),
            Argument(names=("t", "connect-timeout"), kind=int, help="Specifies default connection timeout, in seconds."),
        ]

    def parse_core(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().parse_core(*args, **kwargs)
        if self.args["list-agent-keys"].value:
            from paramiko import Agent

            for key in Agent().get_keys():
                print(f"{key.get_bits()} {key.fingerprint} {key.comment} ({key.algorithm_name})")
            raise Exit

    def update_config(self, merge: bool = True) -> None:
        super().update_config(merge=False)
        import getpass

        connect_kwargs: dict[str, object] = {}
        if self.args["identity"].value:
            connect_kwargs["key_filename"] = self.args["identity"].value
        if self.args["connect-timeout"].value:
            connect_kwargs["timeout"] = self.args["connect-timeout"].value
        if self.args["prompt-for-login-password"].value:
            connect_kwargs["password"] = getpass.getpass("Enter login password for use with SSH auth: ")
        if self.args["prompt-for-passphrase"].value:
            connect_kwargs["passphrase"] = getpass.getpass("Enter passphrase for use unlocking SSH keys: ")
        self.config._overrides["gpumod"] = {  # same mechanism Fabric's Fab uses for its runtime flags
            "hosts": self.args["hosts"].value or "",
            "ssh_config": self.args["ssh-config"].value or "",
            "connect_kwargs": connect_kwargs,
        }
        self.config.merge()

    def _named_parser(self) -> Parser:
        """The parser for the tasks this command line can name: a context for each task whose name
        or alias is one of its words.  Invoke's parser deep-copies every context it is given, on
        every parse (~80 tasks: several ms of each command); a word that names no task is never
        looked up as one, so the parse is the same as with all of them.  Completion
        (``--complete``) lists every task and builds its own full parser."""
        words = {w for w in self.core.unparsed if not w.startswith("-")}
        if isinstance(self.args.help.value, str):
            words.add(self.args.help.value)
        contexts = []
        for primary, aliases in self.collection.task_names.items():
            if primary in words or words.intersection(aliases):
                task = self.collection[primary]
                contexts.append(ParserContext(name=primary, aliases=aliases, args=task.get_arguments(
                    ignore_unknown_help=self.config.tasks.ignore_unknown_help)))
        return Parser(initial=self.initial_context, contexts=contexts)

    def parse_tasks(self) -> None:
        plain = self._named_parser()
        self.parser = Parser(initial=plain.initial, contexts=[_with_help_flag(c) for c in plain.contexts.values()])
        try:
            result = self.parser.parse_argv(self.core.unparsed)
        except ValueError as exc:  # Invoke casting a flag's value to the int/float its default has
            raise Exit(bad_number_message(exc, self.core.unparsed), code=2) from None
        self.core_via_tasks = result.pop(0)
        self._update_core_context(context=self.core[0], new_args=self.core_via_tasks.args)
        for ctx in result:
            if isinstance(ctx, _TaskContext):
                if ctx.args[HELP_ARG].value and not self.args.help.value:
                    self.args.help.value = ctx.name  # parse_cleanup prints this task's help and exits
                del ctx.args[HELP_ARG]
        self.tasks = result
        self.parser = plain  # per-task help and completion list the task's own flags only

    def load_collection(self) -> None:
        try:
            super().load_collection()
        except Exit:
            if self.args.collection.value:
                raise
            from .tasks import namespace

            self.collection = namespace()

    def execute(self) -> None:
        from .errors import GpumodError

        try:
            super().execute()
        except GpumodError as exc:
            from .ui import print_error

            print_error(exc)
            raise Exit(code=exc.exit_code) from None
        except KeyboardInterrupt:
            print("\ninterrupted", file=sys.stderr)
            raise Exit(code=130) from None
        except OSError as exc:  # the last guard: an OS error nothing below turned into ours is one line, not a traceback
            print(f"error: {exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""), file=sys.stderr)
            raise Exit(code=1) from None
        except ModuleNotFoundError as exc:
            task = (self.tasks[0].name or "") if self.tasks else ""
            msg = missing_extra_message(exc, task)
            if msg is None:
                raise
            print(msg, file=sys.stderr)
            raise Exit(code=1) from None


def make_program(namespace: Collection | None = None) -> Gpumod:
    return Gpumod(name="gpumod", binary="inv", binary_names=["gpumod", "inv"], version=__version__, namespace=namespace)


# how long a command runs before Python's cyclic garbage collector is back on (see main)
GC_DEFER_S = 1.0


def _defer_gc() -> None:
    """The collector off for the command's first second: a command is mostly building modules,
    classes and the observation, objects that live until it exits, and collecting them again and
    again cost ~15 ms of every short command here.  A command still running after a second (a
    daemon, ``--watch``, a long switch) collects as usual from then on."""
    import gc
    import os
    import threading

    gc.disable()
    os.register_at_fork(after_in_child=gc.enable)  # a forked child has no timer thread to turn it back on
    resume = threading.Timer(GC_DEFER_S, gc.enable)
    resume.daemon = True
    resume.start()


def _fast_finish() -> None:
    """Before the interpreter's own teardown: what exists now is left out of its last collection
    (``gc.freeze``), which would only walk objects the process is about to drop."""
    import gc

    gc.freeze()


def main() -> None:
    _defer_gc()
    from .codecache import install

    install()
    try:
        try:
            make_program().run()
        finally:  # Invoke ends --help, --version and Exit with sys.exit: flushed here all the same
            sys.stdout.flush()
    except BrokenPipeError:
        # the reader went away (``inv --list | head``): what it did not read is dropped, without a
        # traceback, and nothing more is written (Python's recipe for SIGPIPE)
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(141)
    finally:
        _fast_finish()


if __name__ == "__main__":
    main()
