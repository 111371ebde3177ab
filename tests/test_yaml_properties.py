"""Properties: any YAML text given to the catalog or the inventory loader gives either a value or a
CatalogError whose problems all name a file and a line; never another exception.

Three kinds of input: arbitrary text; documents built from the real schema's keys with values of
every YAML type (control characters, huge and non-finite numbers, nesting); and either of those
cut short or with a character spliced in, as a bad edit or a full disk leaves a file.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from yaml_helpers import dump

from gpumod_tasks.catalog import Catalog, load_catalog
from gpumod_tasks.catalog.load import DOCKER_SCHEMA, MODE_SCHEMA, PRESET_SCHEMA, SIM_SCHEMA
from gpumod_tasks.errors import CatalogError
from gpumod_tasks.inventory import HOST_SCHEMA, Inventory, load_inventory

# modest: the CI machine has two cores; each example writes and reads a few files
PROPERTY = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

text = st.text(st.characters(exclude_categories=("Cs",)), max_size=60)
scalars = st.one_of(
    st.none(), st.booleans(), text,
    st.integers(min_value=-(10**25), max_value=10**25),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["vllm", "llamacpp", "fastapi", "docker", "l1", "l2", "router", "none", "a", "b", "/health",
                     "systemd/vllm.service.j2", "../x", "a\nExecStartPre=/bin/true", " ", ""]),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(st.one_of(text, st.integers()), inner, max_size=4)),
                      max_leaves=12)


def documents(schema: dict[str, Any], nested: dict[str, dict[str, Any]] | None = None) -> st.SearchStrategy[Any]:
    """Mappings over the schema's keys (and a few unknown ones), every value of any type."""
    keys = st.sampled_from(sorted(schema) + ["colour", "id"])
    nested = nested or {}
    value_for = {k: st.one_of(values, st.dictionaries(st.sampled_from(sorted(sub) + ["x"]), values, max_size=4))
                 for k, sub in nested.items()}

    @st.composite
    def build(draw: Any) -> Any:
        doc = {}
        for key in draw(st.lists(keys, max_size=len(schema) + 2, unique=True)):
            doc[key] = draw(value_for.get(key, values))
        return doc

    return st.one_of(build(), values)


def yaml_text(docs: st.SearchStrategy[Any]) -> st.SearchStrategy[str]:
    dumped = docs.map(dump)
    return st.one_of(
        text,
        dumped,
        st.tuples(dumped, st.integers(min_value=0, max_value=400)).map(lambda t: t[0][: t[1]]),  # cut short
        st.tuples(dumped, st.integers(min_value=0, max_value=400), st.sampled_from(list(":-[]{}&*!|>'\"%@`#,?\t\n\x00"))).map(
            lambda t: t[0][: t[1]] + t[2] + t[0][t[1]:]),  # one character spliced in
    )


def loads_or_names_lines(load: Any) -> Any:
    try:
        return load()
    except CatalogError as exc:
        assert exc.problems, "a CatalogError lists its problems"
        for p in exc.problems:
            assert p.file and p.line >= 1, f"problem without a file and line: {p!r}"
        return exc


PRESETS = documents(PRESET_SCHEMA, {"docker": DOCKER_SCHEMA, "sim": SIM_SCHEMA, "unit_vars": {"extra_args": 0, "command": 0}})
MODES = documents(MODE_SCHEMA)
VALID_PRESET = "id: a\nname: A\ndriver: vllm\nport: 9001\nvram_mb: 100\n"


@PROPERTY
@given(preset=yaml_text(PRESETS), mode=yaml_text(MODES))
def test_any_catalog_text_gives_a_catalog_or_problems_with_lines(preset, mode):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "presets" / "x").mkdir(parents=True)
        (root / "modes").mkdir()
        (root / "presets" / "x" / "a.yaml").write_text(preset, encoding="utf-8")
        (root / "presets" / "x" / "ok.yaml").write_text(VALID_PRESET.replace("id: a", "id: ok").replace("9001", "9002"))
        (root / "modes" / "m.yaml").write_text(mode, encoding="utf-8")
        got = loads_or_names_lines(lambda: load_catalog(root))
        assert isinstance(got, (Catalog, CatalogError))


@PROPERTY
@example(field="id", value="b")  # another valid id: the catalog holds preset "b", not "a"
@given(field=st.sampled_from(sorted(PRESET_SCHEMA)), value=values)
def test_a_valid_preset_with_one_field_of_any_value(field, value):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "presets" / "x").mkdir(parents=True)
        (root / "modes").mkdir()
        doc = {"id": "a", "name": "A", "driver": "vllm", "port": 9001, "vram_mb": 100, field: value}
        (root / "presets" / "x" / "a.yaml").write_text(dump(doc), encoding="utf-8")
        got = loads_or_names_lines(lambda: load_catalog(root))
        if isinstance(got, Catalog):
            # whatever was accepted is what a unit may carry: no control characters in any string.
            # The one preset is looked up as the only one: the drawn field may be ``id`` itself
            (p,) = got.presets.values()
            for s in (p.id, p.name, p.model_path, p.model_id, p.description, *(v for kv in p.env for v in kv)):
                assert not any(ord(c) < 32 and c != "\t" for c in s), s


HOSTS = documents(HOST_SCHEMA, {"gpu": {"name": 0, "total_mb": 0}, "preflight": {"factor": 0, "margin_mb": 0},
                                "router_daemon": {"port": 0, "bind": 0, "api_key_file": 0}, "vars": {"extra_args": 0}})
INVENTORIES = st.one_of(
    st.fixed_dictionaries({}, optional={
        "defaults": HOSTS,
        "hosts": st.one_of(values, st.dictionaries(st.one_of(text, st.integers()), HOSTS, max_size=3)),
        "groups": st.one_of(values, st.dictionaries(text, st.lists(st.one_of(text, values), max_size=3), max_size=2)),
    }),
    values,
)


@PROPERTY
@given(body=yaml_text(INVENTORIES))
def test_any_inventory_text_gives_an_inventory_or_problems_with_lines(body):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "hosts.yaml"
        path.write_text(body, encoding="utf-8")
        got = loads_or_names_lines(lambda: load_inventory(path))
        assert isinstance(got, (Inventory, CatalogError))
