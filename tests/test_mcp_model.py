"""The MCP server through the SDK's own client over stdio, and model.info's arithmetic by hand."""

from __future__ import annotations

import json
import os
import sys

import anyio
from conftest import REPO


def call_all(script):
    """Run an async client script against `inv mcp.serve` (a subprocess speaking stdio)."""
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    params = StdioServerParameters(command=sys.executable, args=["-c", "import sys; from gpumod_tasks.program import main; sys.exit(main())",
                                                                   "mcp.serve"],
                                   env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=str(REPO))

    async def run():
        async with stdio_client(params) as (r, w), ClientSession(r, w) as s:
            await s.initialize()
            return await script(s)

    return anyio.run(run)


def payload(result):
    assert not result.is_error, result.content
    if result.structured_content is not None:
        sc = result.structured_content
        return sc.get("result", sc) if isinstance(sc, dict) and set(sc) == {"result"} else sc
    return json.loads(result.content[0].text)


def test_mcp_tools_over_stdio(sim_host):
    async def script(s):
        tools = sorted(t.name for t in (await s.list_tools()).tools)
        out = {"tools": tools}
        out["list"] = payload(await s.call_tool("service_list", {}))
        out["sim"] = payload(await s.call_tool("simulate_mode", {"mode": "rag", "add": ["big"]}))
        out["switch"] = payload(await s.call_tool("gpu_mode_switch", {"mode": "rag"}))
        out["status"] = payload(await s.call_tool("gpu_mode_status", {}))
        out["verify"] = payload(await s.call_tool("gpu_mode_verify", {}))
        out["svc"] = payload(await s.call_tool("service_status", {"service_id": "doc"}))
        out["bad_mode"] = await s.call_tool("gpu_mode_switch", {"mode": "nosuch"})
        out["bad_svc"] = await s.call_tool("service_status", {"service_id": "Bad Id"})
        out["resources"] = sorted(str(r.uri) for r in (await s.list_resources()).resources)
        res = await s.read_resource("gpumod://modes")
        out["modes"] = json.loads(res.contents[0].text)
        return out

    out = call_all(script)
    assert out["tools"] == sorted(["gpu_mode_switch", "gpu_mode_status", "gpu_mode_verify", "gpu_mode_history", "simulate_mode",
                                   "service_list", "service_status", "model_info"])
    assert {s["id"] for s in out["list"]} == {"emb", "doc", "big", "router", "asr", "api"}
    assert out["sim"]["total_mb"] == 2500 + 5000 + 9000 and out["sim"]["fits"] is True
    assert sorted(s["service"] for s in out["switch"]["summary"]["Started"]) == ["doc", "emb"]
    assert out["status"]["mode"] == "rag" and out["status"]["gpu"]["used_mb"] == 7500
    assert out["verify"] == {"mode": "rag", "ok": True, "problems": {}}
    assert out["svc"]["state"] == "running" and out["svc"]["vram_mb"] == 5000
    assert out["bad_mode"].is_error and "unknown mode 'nosuch'; known: blank, chat, code, rag, speak" in out["bad_mode"].content[0].text
    assert out["bad_svc"].is_error and "unknown service 'Bad Id'" in out["bad_svc"].content[0].text
    assert "gpumod://modes" in out["resources"] and "gpumod://presets" in out["resources"]
    assert {m["id"]: m["vram_mb"] for m in out["modes"]}["rag"] == 7500


def test_mcp_switch_takes_the_host_lock(sim_host):
    """While the CLI holds the lock, an MCP switch waits; it runs once the lock is free."""
    import fcntl
    import threading
    import time

    sim_host.state.mkdir(parents=True, exist_ok=True)
    fd = os.open(sim_host.state / "switch.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    released = []

    def release():
        time.sleep(1.5)
        released.append(time.monotonic())
        fcntl.flock(fd, fcntl.LOCK_UN)

    threading.Thread(target=release, daemon=True).start()

    async def script(s):
        r = payload(await s.call_tool("gpu_mode_switch", {"mode": "rag"}))
        return r, time.monotonic()

    rep, done = call_all(script)
    assert released and done > released[0]
    assert sorted(x["service"] for x in rep["summary"]["Started"]) == ["doc", "emb"]


def test_model_info_gguf_by_hand(tmp_path, sim_host):
    from conftest import run_cli

    from gpumod_tasks.llamacpp.gguf_tiny import write_tiny_gguf

    f = write_tiny_gguf(tmp_path / "tiny.gguf")
    code, out, err = run_cli(["model.info", str(f), "--context", "512", "--json"])
    assert code == 0, err
    d = json.loads(out)
    # by hand: vocab 259 x 64 twice (embeddings, output) + 64 (output norm) + 2 layers x
    # (64 + 4 x 64 x 64 + 64 + 3 x 128 x 64) = 16576 x 2 + 64 + 2 x 41088 = 115392
    assert d["params"] == 115392 and d["layers"] == 2 and d["kv_heads"] == 4 and d["head_dim"] == 16
    # KV per 1K = 2 x 2 layers x 4 kv heads x 16 dims x 2 bytes x 1024 = 524288 B = 0.5 MB
    assert d["kv_mb_per_1k"] == 0.5
    # estimate = ceil(weights 115392 x 4 B = 0.44 MB -> 1 MB) + 0.5 MB/1K x 0.5K + 512 = 513.25 -> 514
    assert d["weight_mb"] == 1 and d["estimate_mb"] == 514
    assert d["architecture"] == "llama" and d["dtype"] == "ALL_F32"


def test_model_info_hf_dir_and_preset(tmp_path, sim_host):
    import struct

    from conftest import run_cli

    d = tmp_path / "qwen-like"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({
        "architectures": ["Qwen3ForCausalLM"], "num_hidden_layers": 28, "num_attention_heads": 16,
        "num_key_value_heads": 8, "hidden_size": 2048, "head_dim": 128, "max_position_embeddings": 40960,
        "torch_dtype": "bfloat16"}))
    # a safetensors file: 8-byte header length, JSON header, then the (here zero) tensor bytes
    header = {"a": {"dtype": "BF16", "shape": [1000, 2048], "data_offsets": [0, 4096000]},
              "b": {"dtype": "BF16", "shape": [2048], "data_offsets": [4096000, 4100096]}, "__metadata__": {"format": "pt"}}
    raw = json.dumps(header).encode()
    with open(d / "model.safetensors", "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw + b"\0" * 4100096)
    code, out, err = run_cli(["model.info", str(d), "--context", "8192", "--json"])
    assert code == 0, err
    m = json.loads(out)
    assert m["params"] == 1000 * 2048 + 2048
    # KV per 1K = 2 x 28 x 8 x 128 x 2 B x 1024 = 117440512 B = 112 MB
    assert m["kv_mb_per_1k"] == 112.0
    # 4100096 B -> 4 MB of weights; + 112 x 8 + 512 = 1412
    assert m["weight_mb"] == 4 and m["estimate_mb"] == 4 + 112 * 8 + 512
    target = sim_host.root / "presets" / "chat" / "qwen-like.yaml"
    code, out, err = run_cli(["model.info", str(d), "--context", "8192", "--preset", str(target), "--port", "8200"])
    assert code == 0, err
    text = target.read_text()
    assert "vram_mb: 1412" in text and "kv_cache_per_1k: 112.0" in text and "model_size_mb: 4" in text
    # the written preset is valid in the catalog
    code, out, err = run_cli(["service.show", "--service-id", "qwen-like"])
    assert code == 0 and "1412" in out, err
    # a path that is neither: a clear error, exit 2
    code, out, err = run_cli(["model.info", str(tmp_path / "nothing-here")])
    assert code == 2 and "no such file or directory" in err


def test_model_info_hub_id_offline_uses_the_local_cache(tmp_path, sim_host, monkeypatch):
    """No network here: with the hub unreachable (offline mode), a hub id is read from the
    huggingface_hub cache when it is there, and a clear error names what is missing when not."""
    from conftest import run_cli

    cache = tmp_path / "hf"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    code, out, err = run_cli(["model.info", "acme/tiny-lm", "--json"])
    assert code == 2 and "acme/tiny-lm: the hub is unreachable" in err and "not in the local cache" in err
    # the cache layout huggingface_hub itself writes: refs/main -> snapshots/<revision>/
    rev = "0123456789abcdef0123456789abcdef01234567"
    snap = cache / "models--acme--tiny-lm" / "snapshots" / rev
    snap.mkdir(parents=True)
    (cache / "models--acme--tiny-lm" / "refs").mkdir()
    (cache / "models--acme--tiny-lm" / "refs" / "main").write_text(rev)
    (snap / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "num_hidden_layers": 4,
                                                  "num_attention_heads": 8, "num_key_value_heads": 2, "hidden_size": 512,
                                                  "max_position_embeddings": 4096, "torch_dtype": "float16"}))
    (snap / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": 200 * 1024 * 1024}, "weight_map": {}}))
    code, out, err = run_cli(["model.info", "acme/tiny-lm", "--context", "4096", "--json"])
    assert code == 0, err
    d = json.loads(out)
    assert d["kind"] == "hub" and d["note"] == "offline (HF_HUB_OFFLINE): used the local cache"
    # KV per 1K = 2 x 4 x 2 x 64 x 2 B x 1024 = 2 MB; weights 200 MB (fp16: 100 M params)
    assert d["kv_mb_per_1k"] == 2.0 and d["weight_mb"] == 200 and d["params"] == 100 * 1024 * 1024
    assert d["estimate_mb"] == 200 + 2 * 4 + 512
