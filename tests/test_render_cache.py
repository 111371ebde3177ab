"""Rendered units are remembered between runs, and anything they are rendered from still counts:
an edited preset, template or host entry gives the new text at once (the planner compares digests)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from gpumod_tasks.catalog import load_catalog
from gpumod_tasks.host.local import LocalHost
from gpumod_tasks.inventory import HostSpec
from gpumod_tasks.target import Target
from gpumod_tasks.unit_install import render_units

REPO = Path(__file__).resolve().parent.parent


def _target(root: Path, state: Path, **spec: object) -> Target:
    hs = HostSpec(name="box", sim=True, gpu_total_mb=24564, service_manager="systemd", state_dir=str(state),
                  unit_dir=str(state / "units"), **spec)  # type: ignore[arg-type]
    return Target(hs, LocalHost(hs), load_catalog(root), str(root))


def test_render_cache_hits_and_every_input_still_counts(tmp_path, monkeypatch):
    root, state = tmp_path / "home", tmp_path / "state"
    (root / "presets").mkdir(parents=True)
    (root / "modes").mkdir()
    shutil.copytree(REPO / "templates", root / "templates")
    preset = root / "presets" / "emb.yaml"
    preset.write_text("id: emb\nname: emb\ndriver: vllm\nport: 18011\nvram_mb: 1000\n")
    (root / "modes" / "rag.yaml").write_text("id: rag\nname: rag\nservices: [emb]\n")
    monkeypatch.setenv("GPUMOD_STATE_DIR", str(state))

    def units(**spec: object) -> tuple[str, str]:
        t = _target(root, state, **spec)
        u = render_units(t, [t.catalog.presets["emb"]])["gpumod-emb.service"]
        return u.body, u.digest

    body, dig = units()
    cache = json.loads((state / "render-cache.json").read_text())
    assert list(cache.values()) == [body]  # remembered for the next run
    assert units() == (body, dig)  # a new process would read it from there
    # the preset edited: rendered again
    preset.write_text(preset.read_text().replace("vram_mb: 1000", "vram_mb: 1234"))
    body2, dig2 = units()
    assert dig2 != dig and "1234" in body2 and "1234" not in body
    # a template edited (same preset): rendered again
    tpl = root / "templates" / "systemd" / "base.service.j2"  # what vllm.service.j2 extends
    tpl.write_text(tpl.read_text() + "# an operator's note\n")
    body3, dig3 = units()
    assert dig3 != dig2 and body3.endswith("# an operator's note\n")
    # the host entry changed: rendered again
    _, dig4 = units(scope="user")
    assert dig4 != dig3
    # a corrupt cache file is only a miss
    (state / "render-cache.json").write_text("{not json")
    assert units()[1] == dig3
