"""The YAML documents kept between runs: a command that reads the same catalog again parses no
YAML (ruamel is not even imported), an edited file is read anew, a broken one still says where."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

LOAD = ("import sys\nfrom gpumod_tasks.catalog.load import load_catalog\n"
        "from gpumod_tasks.errors import CatalogError\n"
        "try:\n cat = load_catalog(sys.argv[1])\nexcept CatalogError as e:\n print('ERROR', *e.details()); raise SystemExit(0)\n"
        "print('PORT', cat.presets['emb'].port, 'NOTE', cat.presets['emb'].description)\n"
        "print('RUAMEL', 'ruamel.yaml' in sys.modules)\n")


def load(root: Path, state: Path) -> str:
    r = subprocess.run([sys.executable, "-c", LOAD, str(root)], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(REPO), "GPUMOD_STATE_DIR": str(state)})
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_a_catalog_read_again_parses_no_yaml_and_an_edit_is_read_anew(tmp_path):
    root, state = tmp_path / "cat", tmp_path / "state"
    (root / "presets" / "a").mkdir(parents=True)
    (root / "modes").mkdir()
    preset = root / "presets" / "a" / "emb.yaml"
    preset.write_text("id: emb\nname: emb\ndriver: vllm\nport: 8001\nvram_mb: 1000\ndescription: first\n")
    (root / "modes" / "m.yaml").write_text("id: m\nname: m\nservices: [emb]\n")
    assert load(root, state).split() == ["PORT", "8001", "NOTE", "first", "RUAMEL", "True"]
    assert (state / "cache" / "yaml-docs.marshal").is_file()
    assert load(root, state).split() == ["PORT", "8001", "NOTE", "first", "RUAMEL", "False"]
    # the same size and mtime would not fool it: the key is the content
    st = preset.stat()
    preset.write_text(preset.read_text().replace("first", "later").replace("8001", "8002"))
    os.utime(preset, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert load(root, state).split() == ["PORT", "8002", "NOTE", "later", "RUAMEL", "True"]
    # a broken file is never served from the documents kept: its problem names file and line
    preset.write_text("id: emb\nname: emb\nname: twice\ndriver: vllm\nport: 8001\nvram_mb: 1000\n")
    out = load(root, state)
    assert out.startswith("ERROR") and "presets/a/emb.yaml:3" in out and "duplicate key" in out, out
    # a garbled cache file only means parsing
    (state / "cache" / "yaml-docs.marshal").write_bytes(b"\x00garbage")
    preset.write_text("id: emb\nname: emb\ndriver: vllm\nport: 8003\nvram_mb: 1000\ndescription: x\n")
    assert load(root, state).split() == ["PORT", "8003", "NOTE", "x", "RUAMEL", "True"]
