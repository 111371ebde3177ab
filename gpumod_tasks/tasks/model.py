"""Models on disk or on the hub: parameters, weight size, KV cache, a VRAM estimate, a new preset."""

from __future__ import annotations

import json

from invoke import Collection, Exit, task


@task(positional=["model"], help={
    "model": "A model directory (config.json + safetensors), a .gguf file, or a Hugging Face id.",
    "context": "Context length for the estimate (default: the preset's --context, else min(model max, 32768)).",
    "preset": "Write a new preset YAML to this path (vram_mb, kv_cache_per_1k, model_size_mb filled in).",
    "id": "Id of the written preset (default: from the file name).",
    "port": "Port of the written preset (default 8100).",
    "driver": "Driver of the written preset (default: llamacpp for GGUF, vllm otherwise).",
    "json": "Print JSON.",
})
def info(c, model, context=0, preset=None, id=None, port=8100, driver=None, json_=False):
    """Parameters, weight size, KV cache per 1K tokens and the VRAM estimate at a context.

    KV per 1K = 2 x layers x kv_heads x head_dim x 2 bytes x 1024; the estimate is weights + KV at
    the context + 512 MB runtime. Reads GGUF headers and safetensors headers, never the weights.
    """
    from pathlib import Path

    from ..modelinfo import inspect_model, preset_yaml
    from ..ui import make_console

    mi, note = inspect_model(model)
    ctx = int(context) or min(mi.max_context or 32768, 32768)
    learned = _learned(c, model)
    if json_:
        print(json.dumps({**mi.as_dict(ctx), "note": note or None, "learned": learned}, indent=1))
    else:
        con = make_console()
        if note:
            con.print(f"[yellow]{note}[/yellow]")
        con.print(f"[bold]{mi.source}[/bold] ({mi.kind}): {mi.architecture}, {mi.dtype}")
        con.print(f"  parameters      {mi.params:,} ({mi.params / 1e9:.2f} B)")
        con.print(f"  weights         {mi.weight_mb} MB" + (" (counted from config.json: no weight files here)"
                                                          if mi.weights_from == "config" else ""))
        con.print(f"  layers / heads  {mi.layers} layers, {mi.heads} heads, {mi.kv_heads} KV heads x {mi.head_dim} dims "
                  f"(hidden {mi.hidden}), max context {mi.max_context or '?'}")
        con.print(f"  KV cache        {mi.kv_mb_per_1k:.3f} MB per 1K tokens (fp16)")
        con.print(f"  estimate        {mi.estimate_mb(ctx)} MB at {ctx} tokens "
                  f"(weights + {mi.kv_mb_per_1k * ctx / 1024:.0f} MB KV + 512 MB runtime)")
        for r in learned:
            at = f" at its {r['context_size']} tokens: estimate {mi.estimate_mb(r['context_size'])} MB" if r["context_size"] else ""
            con.print(f"  measured        {r['measured_mb']} MB held by {r['service']} (max of {r['runs']} run{'s' if r['runs'] != 1 else ''}; "
                      f"preset declares {r['declared_mb']} MB){at}")
    if preset:
        out = Path(preset)
        if out.exists():
            raise Exit(f"{out} exists; not overwriting it", code=2)
        pid = id or out.stem
        drv = driver or ("llamacpp" if mi.kind == "gguf" else "vllm")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(preset_yaml(mi, preset_id=pid, port=int(port), context=ctx, driver=drv))
        if not json_:
            print(f"wrote {out}")


def _learned(c, model: str) -> list:
    """What services running this model were measured holding on the target (none when it cannot be read)."""
    from ..cli_context import host_specs, open_target
    from ..footprint_view import learned_for_model

    try:
        with open_target(c, host_specs(c)[0]) as t:
            return learned_for_model(t, model)
    except Exception:  # noqa: BLE001 - the estimate stands alone
        return []


ns = Collection("model")
ns.add_task(info)
