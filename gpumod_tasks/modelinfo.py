"""Model facts and a VRAM estimate from what is on disk: a Hugging Face directory (config.json plus
safetensors), a GGUF file (its header), or a hub id (through huggingface_hub's cache; offline it
says so and uses what is cached).

KV cache per 1K tokens = 2 (K and V) x layers x kv_heads x head_dim x bytes per element x 1024.
The estimate at a context is weights + KV at that context + a fixed runtime overhead
(CUDA context, activations, graphs), which is what ``vram_mb`` in a preset means."""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .errors import GpumodError

MB = 1024 * 1024
RUNTIME_OVERHEAD_MB = 512
DTYPE_BYTES = {"float32": 4, "float": 4, "float16": 2, "half": 2, "bfloat16": 2, "float8_e4m3fn": 1, "int8": 1}
SAFETENSORS_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                     "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


class ModelInfoError(GpumodError):
    exit_code = 2


@dataclass(frozen=True)
class ModelInfo:
    source: str
    kind: str  # hf-dir | gguf | hub
    architecture: str
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    hidden: int
    max_context: int
    params: int
    weight_bytes: int
    dtype: str  # weights' dtype or GGUF quantization
    kv_bytes_per_elem: int = 2
    weights_from: str = "files"  # files (safetensors / GGUF / index) | config (counted from config.json alone)

    @property
    def kv_bytes_per_1k(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * self.kv_bytes_per_elem * 1024

    @property
    def kv_mb_per_1k(self) -> float:
        return self.kv_bytes_per_1k / MB

    @property
    def weight_mb(self) -> int:
        return math.ceil(self.weight_bytes / MB)

    def estimate_mb(self, context: int) -> int:
        return math.ceil(self.weight_mb + self.kv_mb_per_1k * context / 1024 + RUNTIME_OVERHEAD_MB)

    def as_dict(self, context: int) -> dict[str, Any]:
        return {"source": self.source, "kind": self.kind, "architecture": self.architecture, "layers": self.layers,
                "heads": self.heads, "kv_heads": self.kv_heads, "head_dim": self.head_dim, "hidden": self.hidden,
                "max_context": self.max_context, "params": self.params, "weight_mb": self.weight_mb, "dtype": self.dtype,
                "kv_mb_per_1k": round(self.kv_mb_per_1k, 3), "context": context, "estimate_mb": self.estimate_mb(context),
                "weights_from": self.weights_from}


def from_config(config: dict[str, Any], weights: tuple[int, int], source: str, kind: str) -> ModelInfo:
    """Pure: a transformers config.json plus (params, weight bytes) -> ModelInfo."""
    cfg = config.get("text_config") or config  # multimodal configs nest the language model
    try:
        layers = int(cfg["num_hidden_layers"])
        heads = int(cfg["num_attention_heads"])
        hidden = int(cfg["hidden_size"])
    except KeyError as exc:
        raise ModelInfoError(f"{source}: config.json has no {exc.args[0]} (not a transformer language model?)") from None
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or hidden // heads)
    dtype = str(cfg.get("torch_dtype") or config.get("torch_dtype") or "bfloat16")
    quant = config.get("quantization_config") or {}
    if quant.get("quant_method"):
        dtype = f"{quant['quant_method']}" + (f" {quant['bits']}-bit" if quant.get("bits") else "")
    arch = (config.get("architectures") or [cfg.get("model_type", "?")])[0]
    return ModelInfo(source, kind, str(arch), layers, heads, kv_heads, head_dim, hidden,
                     int(cfg.get("max_position_embeddings") or 0), weights[0], weights[1], dtype)


def params_from_config(config: dict[str, Any]) -> int:
    """Pure: the parameter count of a decoder-only transformer from its config alone: embeddings
    (and an untied LM head), per layer the attention projections (q and o at heads x head_dim, k and
    v at kv_heads x head_dim), a gated MLP (gate, up, down) or its experts and router, and the norms."""
    cfg = config.get("text_config") or config
    hidden = int(cfg["hidden_size"])
    layers = int(cfg["num_hidden_layers"])
    heads = int(cfg["num_attention_heads"])
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or hidden // heads)
    vocab = int(cfg.get("vocab_size") or 0)
    inter = int(cfg.get("intermediate_size") or 4 * hidden)
    experts = int(cfg.get("num_local_experts") or cfg.get("num_experts") or cfg.get("n_routed_experts") or 0)
    embed = vocab * hidden * (1 if cfg.get("tie_word_embeddings", config.get("tie_word_embeddings", False)) else 2)
    attn = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim
    if experts:
        moe_inter = int(cfg.get("moe_intermediate_size") or inter)
        shared = int(cfg.get("n_shared_experts") or 0)
        mlp = (experts + shared) * 3 * hidden * moe_inter + hidden * experts
    else:
        mlp = 3 * hidden * inter
    return embed + layers * (attn + mlp + 2 * hidden) + hidden


def weight_bytes_per_param(config: dict[str, Any]) -> float:
    quant = config.get("quantization_config") or {}
    if quant.get("bits"):
        return int(quant["bits"]) / 8
    cfg = config.get("text_config") or config
    return DTYPE_BYTES.get(str(cfg.get("torch_dtype") or config.get("torch_dtype") or "bfloat16"), 2)


def safetensors_totals(files: list[Path]) -> tuple[int, int]:
    """(parameters, bytes) from safetensors headers: 8-byte little-endian length, then JSON."""
    params = nbytes = 0
    for f in files:
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for name, t in header.items():
            if name == "__metadata__":
                continue
            count = math.prod(t["shape"]) if t["shape"] else 1
            params += count
            nbytes += count * SAFETENSORS_BYTES.get(t["dtype"], 2)
    return params, nbytes


def from_hf_dir(d: Path, source: str | None = None, kind: str = "hf-dir") -> ModelInfo:
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        raise ModelInfoError(f"{d}: no config.json (expected a Hugging Face model directory or a .gguf file)")
    config = json.loads(cfg_path.read_text())
    files = sorted(d.glob("*.safetensors"))
    if files:
        weights = safetensors_totals(files)
    else:
        index = d / "model.safetensors.index.json"
        if index.is_file():
            total = int(json.loads(index.read_text()).get("metadata", {}).get("total_size", 0))
            dtype_b = DTYPE_BYTES.get(str(config.get("torch_dtype", "bfloat16")), 2)
            weights = (total // dtype_b, total)
        else:
            # config.json alone (a hub id's cache before the weights, a stub directory): count them
            try:
                params = params_from_config(config)
            except (KeyError, TypeError, ValueError):
                params = 0
            info = from_config(config, (params, int(params * weight_bytes_per_param(config))), source or str(d), kind)
            return replace(info, weights_from="config")
    return from_config(config, weights, source or str(d), kind)


def from_gguf(path: Path) -> ModelInfo:
    try:
        import gguf
    except ImportError:
        raise ModelInfoError("reading GGUF needs the gguf package: pip install 'gpumod[models]'") from None
    r = gguf.GGUFReader(str(path))

    def field(key: str, default: Any = None) -> Any:
        f = r.fields.get(key)
        if f is None:
            return default
        v = f.contents()
        return v

    arch = str(field("general.architecture", "?"))
    layers = int(field(f"{arch}.block_count", 0))
    heads = int(field(f"{arch}.attention.head_count", 0) or 0)
    kv_heads = int(field(f"{arch}.attention.head_count_kv", heads) or heads)
    hidden = int(field(f"{arch}.embedding_length", 0))
    head_dim = int(field(f"{arch}.attention.key_length", 0) or (hidden // heads if heads else 0))
    ftype = field("general.file_type")
    try:
        dtype = gguf.LlamaFileType(int(ftype)).name.removeprefix("MOSTLY_") if ftype is not None else "?"
    except ValueError:
        dtype = f"file_type {ftype}"
    params = sum(int(t.n_elements) for t in r.tensors)
    nbytes = sum(int(t.n_bytes) for t in r.tensors)
    return ModelInfo(str(path), "gguf", arch, layers, heads, kv_heads, head_dim, hidden,
                     int(field(f"{arch}.context_length", 0)), params, nbytes, dtype)


def from_hub(repo_id: str) -> tuple[ModelInfo, str]:
    """A hub id: config.json and the safetensors index through huggingface_hub (cache first when offline)."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise ModelInfoError(f"{repo_id!r} is not a local path; looking it up on the hub needs huggingface_hub: "
                             "pip install 'gpumod[models]'") from None
    from huggingface_hub import constants

    offline = bool(constants.HF_HUB_OFFLINE)
    note = "offline (HF_HUB_OFFLINE): used the local cache" if offline else ""
    got: dict[str, str] = {}
    for name in ("config.json", "model.safetensors.index.json"):
        try:
            got[name] = hf_hub_download(repo_id, name, local_files_only=offline)
        except Exception as exc:  # noqa: BLE001 - offline, gated, missing: fall back to the cache
            try:
                got[name] = hf_hub_download(repo_id, name, local_files_only=True)
                note = note or "the hub is unreachable: used the local cache"
            except Exception:  # noqa: BLE001
                if name == "config.json":
                    raise ModelInfoError(f"{repo_id}: the hub is unreachable ({type(exc).__name__}) and config.json "
                                         "is not in the local cache") from None
    d = Path(got["config.json"]).parent
    return from_hf_dir(d, source=repo_id, kind="hub"), note


def inspect_model(ref: str) -> tuple[ModelInfo, str]:
    p = Path(os.path.expanduser(ref))
    if p.is_file() and p.suffix == ".gguf":
        return from_gguf(p), ""
    if p.is_dir():
        ggufs = sorted(p.glob("*.gguf"))
        if not (p / "config.json").exists() and ggufs:
            return from_gguf(ggufs[0]), f"{len(ggufs)} GGUF files; read {ggufs[0].name}"
        return from_hf_dir(p), ""
    if p.exists():
        raise ModelInfoError(f"{ref}: not a .gguf file or a model directory")
    if "/" in ref and not ref.startswith((".", "/", "~")):
        return from_hub(ref)
    raise ModelInfoError(f"{ref}: no such file or directory (and not a hub id like org/name)")


def preset_yaml(info: ModelInfo, *, preset_id: str, port: int, context: int, driver: str) -> str:
    """A new preset with vram_mb, kv_cache_per_1k and model_size_mb filled in from the model."""
    from io import StringIO

    from ruamel.yaml import YAML

    doc: dict[str, Any] = {
        "id": preset_id, "name": f"{info.architecture} ({info.dtype})", "driver": driver, "port": port,
        "vram_mb": info.estimate_mb(context), "model_size_mb": info.weight_mb,
        "context_size": context, "kv_cache_per_1k": round(info.kv_mb_per_1k, 2),
        "description": f"Estimated by gpumod model.info from {info.source}: weights {info.weight_mb} MB + "
                       f"KV {info.kv_mb_per_1k:.2f} MB/1K x {context} + {RUNTIME_OVERHEAD_MB} MB runtime.",
    }
    if info.kind == "gguf":
        doc["model_path"] = info.source
    else:
        doc["model_id"] = info.source
    y = YAML()
    y.default_flow_style = False
    buf = StringIO()
    y.dump(doc, buf)
    return buf.getvalue()
