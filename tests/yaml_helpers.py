"""Write YAML from Python values in tests (ruamel, so the text is what gpumod itself reads)."""

from __future__ import annotations

import io


def dump(value: object) -> str:
    from ruamel.yaml import YAML

    y = YAML(typ="safe", pure=True)
    y.default_flow_style = False
    buf = io.StringIO()
    y.dump(value, buf)
    return buf.getvalue()
