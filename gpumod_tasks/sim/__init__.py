"""The simulated GPU host: VRAM ledger, nvidia-smi shim, stand-in inference servers.

Everything in this package uses the standard library only and relative imports, so it can be
copied as-is onto an agentless box (``gpumod_sim``) and run by its plain python3.
"""
