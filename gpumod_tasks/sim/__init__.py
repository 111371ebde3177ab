"""The simulated GPU host: VRAM ledgers (one per GPU), nvidia-smi shim, stand-in inference servers
(which see the GPUs CUDA_VISIBLE_DEVICES gives them, ``devices``; vLLM's tensor-parallel ranks as
worker processes, ``workers``).

Everything in this package uses the standard library only and relative imports, so it can be
copied as-is onto an agentless box (``gpumod_sim``) and run by its plain python3.
"""
