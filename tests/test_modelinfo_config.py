"""model.info on a directory with config.json alone: the parameters are counted from the config."""

from __future__ import annotations

import json

from gpumod_tasks.modelinfo import from_hf_dir, params_from_config

# Llama-2-7B's config (published): 6,738,415,616 parameters
LLAMA2_7B = {"architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "intermediate_size": 11008, "num_attention_heads": 32,
             "num_hidden_layers": 32, "num_key_value_heads": 32, "vocab_size": 32000, "torch_dtype": "float16",
             "max_position_embeddings": 4096, "tie_word_embeddings": False}
# Qwen2.5-0.5B (tied embeddings, GQA with 2 KV heads): 494,032,768 parameters
QWEN25_05B = {"architectures": ["Qwen2ForCausalLM"], "hidden_size": 896, "intermediate_size": 4864, "num_attention_heads": 14,
              "num_hidden_layers": 24, "num_key_value_heads": 2, "vocab_size": 151936, "torch_dtype": "bfloat16",
              "tie_word_embeddings": True, "max_position_embeddings": 32768}


def test_parameter_count_from_config_matches_published_figures():
    assert params_from_config(LLAMA2_7B) == 6_738_415_616
    # Qwen2's q/k/v projections carry biases (a few hundred thousand parameters) the generic count leaves out
    assert abs(params_from_config(QWEN25_05B) - 494_032_768) / 494_032_768 < 0.002


def test_model_info_and_preset_from_a_config_only_directory(tmp_path, sim_host):
    d = tmp_path / "llama"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(LLAMA2_7B))
    info = from_hf_dir(d)
    assert info.weights_from == "config" and info.params == 6_738_415_616
    assert info.weight_mb == 12853  # 6.74 B x 2 bytes (float16), rounded up
    code, out, err = sim_host.inv("model.info", str(d), "--json")
    assert code == 0, err
    d_json = json.loads(out)
    assert d_json["weights_from"] == "config" and d_json["weight_mb"] == 12853
    preset = tmp_path / "llama.yaml"
    code, out, err = sim_host.inv("model.info", str(d), "--preset", str(preset), "--id", "llama", "--port", "8100")
    assert code == 0, err
    assert "model_size_mb: 12853" in preset.read_text() and "counted from config.json" in out
