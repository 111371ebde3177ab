"""Host access: one interface, a local and an SSH implementation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import CommandResult, Host, shell_join
from .local import LocalHost

if TYPE_CHECKING:
    from ..inventory import HostSpec


def connect(spec: HostSpec, *, fabric_config: Any = None, connect_kwargs: dict[str, Any] | None = None) -> Host:
    """A Host for an inventory entry. Fabric is imported only here, for SSH targets."""
    if spec.connection == "nsenter":
        from .nsenter import NsenterHost

        return NsenterHost(spec)
    if spec.is_local:
        return LocalHost(spec)
    from .ssh import SshHost

    return SshHost(spec, config=fabric_config, connect_kwargs=connect_kwargs)


__all__ = ["CommandResult", "Host", "LocalHost", "connect", "shell_join"]
