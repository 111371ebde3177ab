"""Tiny GGUF models with random weights: a 2-layer, 64-wide llama with a byte-level vocabulary.

About 470 KB each; the real llama-server loads one in well under a second on a CPU and answers a
chat request (with nonsense text). They let the real router be exercised without any download.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TinyShape:
    n_layer: int = 2
    n_embd: int = 64
    n_head: int = 4
    n_ff: int = 128
    n_ctx: int = 512


SPECIAL = ("<unk>", "<s>", "</s>")
# llama.cpp token types: 2 unknown, 3 control, 6 byte
TOKEN_TYPES = (2, 3, 3)


def vocabulary() -> tuple[list[str], list[int]]:
    tokens = [*SPECIAL, *(f"<0x{i:02X}>" for i in range(256))]
    types = [*TOKEN_TYPES, *([6] * 256)]
    return tokens, types


def write_tiny_gguf(path: str | Path, *, seed: int = 0, shape: TinyShape = TinyShape(), name: str = "") -> Path:
    """Write one tiny llama GGUF to ``path`` (directories created) and return the path."""
    import gguf
    import numpy as np

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tokens, types = vocabulary()
    n_vocab, e, ff = len(tokens), shape.n_embd, shape.n_ff

    def w(*dims: int) -> np.ndarray:
        return (rng.standard_normal(dims) * 0.02).astype(np.float32)

    tmp = path.with_suffix(".gguf.tmp")
    wr = gguf.GGUFWriter(str(tmp), "llama")
    wr.add_name(name or path.stem)
    wr.add_context_length(shape.n_ctx)
    wr.add_embedding_length(e)
    wr.add_block_count(shape.n_layer)
    wr.add_feed_forward_length(ff)
    wr.add_head_count(shape.n_head)
    wr.add_head_count_kv(shape.n_head)
    wr.add_rope_dimension_count(e // shape.n_head)
    wr.add_layer_norm_rms_eps(1e-5)
    wr.add_file_type(gguf.LlamaFileType.ALL_F32)
    wr.add_tokenizer_model("llama")
    wr.add_token_list(tokens)
    wr.add_token_scores([0.0] * n_vocab)
    wr.add_token_types(types)
    wr.add_bos_token_id(1)
    wr.add_eos_token_id(2)
    wr.add_unk_token_id(0)
    # numpy shapes are ggml's ne reversed: token_embd ne = [n_embd, n_vocab]
    wr.add_tensor("token_embd.weight", w(n_vocab, e))
    for i in range(shape.n_layer):
        wr.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(e, dtype=np.float32))
        for t in ("attn_q", "attn_k", "attn_v", "attn_output"):
            wr.add_tensor(f"blk.{i}.{t}.weight", w(e, e))
        wr.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(e, dtype=np.float32))
        wr.add_tensor(f"blk.{i}.ffn_gate.weight", w(ff, e))
        wr.add_tensor(f"blk.{i}.ffn_up.weight", w(ff, e))
        wr.add_tensor(f"blk.{i}.ffn_down.weight", w(e, ff))
    wr.add_tensor("output_norm.weight", np.ones(e, dtype=np.float32))
    wr.add_tensor("output.weight", w(n_vocab, e))
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    tmp.replace(path)
    return path


def write_models_dir(directory: str | Path, names: list[str]) -> list[Path]:
    """A router models directory: one tiny GGUF per name (``NAME.gguf``), each with its own weights."""
    return [write_tiny_gguf(Path(directory) / f"{n}.gguf", seed=i) for i, n in enumerate(names)]
