"""What the catalog must know of each engine without loading any engine code (a leaf: no imports).

One row per engine, keyed by its ``driver:`` name: the sleep modes a preset may declare, and the
VRAM a sleeping service still holds when its preset does not say (``sleep_vram_mb``).  vLLM keeps
its CUDA context and graph pool (a few hundred MB per process); a llama.cpp router that unloaded
its model holds none (the child exits); a custom server is assumed to keep its context; a
container cannot sleep.  The engine modules read their row from here.
"""

from __future__ import annotations

SLEEP_MODES: dict[str, tuple[str, ...]] = {
    "vllm": ("none", "l1", "l2"),
    "llamacpp": ("none", "router"),
    "fastapi": ("none", "l1", "l2"),
    "docker": ("none",),
}

DEFAULT_RESIDUAL_MB: dict[str, int] = {"vllm": 512, "llamacpp": 0, "fastapi": 256, "docker": 0}

# Under tensor parallel a sleeping vLLM keeps far more on each GPU (NCCL buffers and each rank's
# CUDA graphs): 2.4-7.4 GiB per GPU at TP=2 are published (NeMo-RL #223); the low end, per GPU, is
# the default for a preset on several GPUs that does not say (``sleep_vram_mb`` is the total).
DEFAULT_TP_RESIDUAL_MB_PER_GPU: dict[str, int] = {"vllm": 2458}
