"""gpumod: switch one GPU box between named modes of inference services, safely.

Kept import-light on purpose: the CLI imports submodules only when a task needs them.
"""

__version__ = "0.1.0"
