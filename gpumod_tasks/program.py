"""The ``gpumod`` / ``inv`` program: Invoke's CLI with Fabric's host flags.

It keeps every core flag of Invoke's ``inv`` and adds the ones Fabric's ``fab`` adds (``-H``,
``-i``, ``-S``, ``-t``, ``--prompt-for-login-password``, ``--prompt-for-passphrase``,
``--list-agent-keys``) without importing Fabric: paramiko costs a few hundred ms to import, so
it is loaded only when a remote host is actually targeted.

The namespace is the project's ``tasks.py`` when one is found from the working directory (as
``inv`` always does), else the installed ``gpumod_tasks.tasks`` namespace.  This is also the one
place where gpumod's errors become a red message and an exit code.
"""

from __future__ import annotations

import sys

from invoke import Argument, Collection, Exit, Program

from . import __version__


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


def make_program(namespace: Collection | None = None) -> Gpumod:
    return Gpumod(name="gpumod", binary="inv", binary_names=["gpumod", "inv"], version=__version__, namespace=namespace)


def main() -> None:
    make_program().run()


if __name__ == "__main__":
    main()
