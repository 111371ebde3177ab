"""Bad input is refused at validation with file:line:column: field, never a traceback.

Each case is a class of input the campaign found reaching units, file names or the planner:
control characters, over-long ids, templates outside templates/systemd/, non-finite and absurd
numbers, a string where a list of words belongs, an empty ``services:``, inventories of the wrong
shape.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gpumod_tasks.catalog import load_catalog
from gpumod_tasks.errors import CatalogError
from gpumod_tasks.inventory import load_inventory
from gpumod_tasks.yamlfile import ID_MAX

GOOD = "id: a\nname: A\ndriver: vllm\nport: 9001\nvram_mb: 100\n"


def _root(tmp_path: Path, presets: dict[str, str], modes: dict[str, str] | None = None, templates: tuple[str, ...] = ()) -> Path:
    for rel, text in presets.items():
        p = tmp_path / "presets" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    (tmp_path / "modes").mkdir(exist_ok=True)
    for rel, text in (modes or {}).items():
        (tmp_path / "modes" / rel).write_text(text)
    for name in templates:
        t = tmp_path / "templates" / name
        t.parent.mkdir(parents=True, exist_ok=True)
        t.write_text("{% extends 'systemd/base.service.j2' %}\n")
    return tmp_path


def problems(tmp_path: Path, presets: dict[str, str], modes: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(CatalogError) as ei:
        load_catalog(_root(tmp_path, presets, modes))
    return [str(p) for p in ei.value.problems]


def only(got: list[str]) -> str:
    assert len(got) == 1, got
    return got[0]


# -- control characters ---------------------------------------------------------------------------

@pytest.mark.parametrize("extra, field, where", [
    ('name: "A\\nExecStartPre=/bin/touch /tmp/owned"\n', "name", "2:7"),
    ('env:\n  HF_HOME: "/x\\n[Service]"\n', "env.HF_HOME", "7:12"),
    ('model_path: "/m/a\\r.gguf"\n', "model_path", "6:13"),
    ('unit_vars:\n  extra_args: ["--x", "y\\u0000z"]\n', "unit_vars.extra_args[1]", "7:23"),
    ('unit_vars:\n  task: "embed\\u0085"\n', "unit_vars.task", "7:9"),
    ('description: "one\\u2028two"\n', "description", "6:14"),
])
def test_control_characters_are_refused_with_file_line_field(tmp_path, extra, field, where):
    text = GOOD.replace("name: A\n", extra) if extra.startswith("name") else GOOD + extra
    got = only(problems(tmp_path, {"x/a.yaml": text}))
    assert got.startswith(f"presets/x/a.yaml:{where}: {field}: contains a control character (U+"), got


def test_control_character_in_a_docker_word_and_a_mode_name(tmp_path):
    docker = ("id: d\nname: D\ndriver: docker\nport: 9002\nvram_mb: 10\n"
              'docker:\n  image: img\n  command: ["serve", "--x\\ty", "a\\nb"]\n')
    got = problems(tmp_path, {"x/d.yaml": docker}, {"m.yaml": 'id: m\nname: "M\\r"\nservices: [d]\n'})
    assert any(g.startswith("presets/x/d.yaml:8:32: docker.command[2]: contains a control character (U+000A, newline)")
               for g in got), got
    assert any(g.startswith("modes/m.yaml:2:7: name: contains a control character (U+000D, carriage return)") for g in got), got
    assert not any("command[1]" in g for g in got), "a tab inside a quoted word is harmless"


def test_tab_in_a_name_is_allowed(tmp_path):
    c = load_catalog(_root(tmp_path, {"x/a.yaml": GOOD.replace("name: A", 'name: "A\\tB"')}))
    assert c.presets["a"].name == "A\tB"


# -- lengths ---------------------------------------------------------------------------------------

def test_ids_fit_unit_and_file_names(tmp_path):
    assert ID_MAX == 255 - len("gpumod-router-") - len(".service") - len(".pid") == 229
    ok = "a" * ID_MAX
    c = load_catalog(_root(tmp_path / "ok", {"x/a.yaml": GOOD.replace("id: a", f"id: {ok}")}))
    assert len(c.presets[ok].unit.encode()) <= 255
    long = "a" * 300
    got = only(problems(tmp_path / "bad", {"x/a.yaml": GOOD.replace("id: a", f"id: {long}")}))
    assert got == f"presets/x/a.yaml:1:5: id: is 300 characters long; an id is at most {ID_MAX} (it becomes part of unit and file names)"


def test_long_ids_in_modes_dependencies_and_names(tmp_path):
    long = "b" * 400
    got = problems(tmp_path, {"x/a.yaml": GOOD.replace("name: A", "name: " + "n" * 300) + f"depends_on: [{long}]\n"},
                   {"m.yaml": f"id: {long}\nname: M\nservices: [{long}]\n"})
    assert "presets/x/a.yaml:2:7: name: is 300 characters long; at most 256 are allowed" in got
    assert any(g.startswith("presets/x/a.yaml:6:14: depends_on[0]: is 400 characters long") for g in got), got
    assert any(g.startswith("modes/m.yaml:1:5: id: is 400 characters long") for g in got), got
    assert any(g.startswith("modes/m.yaml:3:12: services[0]: is 400 characters long") for g in got), got


# -- unit templates --------------------------------------------------------------------------------

@pytest.mark.parametrize("template, message", [
    ("../../../etc/passwd", "must name a template in templates/systemd/"),
    ("systemd/../../secrets.j2", "must name a template in templates/systemd/"),
    ("/etc/systemd/system/x.service", "must name a template in templates/systemd/"),
    ("systemd/missing.service.j2", "no such template in"),
])
def test_unit_template_must_exist_under_templates_systemd(tmp_path, template, message):
    root = _root(tmp_path, {"x/a.yaml": GOOD + f"unit_template: {template}\n"}, templates=("systemd/mine.service.j2",))
    with pytest.raises(CatalogError) as ei:
        load_catalog(root)
    got = only([str(p) for p in ei.value.problems])
    assert got.startswith("presets/x/a.yaml:6:16: unit_template: ") and message in got, got


def test_an_existing_unit_template_is_accepted(tmp_path):
    root = _root(tmp_path, {"x/a.yaml": GOOD + "unit_template: systemd/mine.service.j2\n"}, templates=("systemd/mine.service.j2",))
    assert load_catalog(root).presets["a"].unit_template == "systemd/mine.service.j2"


# -- numbers ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("line, message", [
    ("kv_cache_per_1k: .nan", "kv_cache_per_1k: must be a finite number, got nan"),
    ("kv_cache_per_1k: .inf", "kv_cache_per_1k: must be a finite number, got inf"),
    ("kv_cache_per_1k: 1e400", "kv_cache_per_1k: must be a finite number, got inf"),
    ("startup_timeout: 1000000000000", "startup_timeout: must be <= 86400, got 1000000000000"),
    ("context_size: 100000000000000000000", "context_size: must be <= 16777216, got 100000000000000000000"),
    ("model_size_mb: 99999999999", "model_size_mb: must be <= 16777216, got 99999999999"),
    ("sleep_vram_mb: -1", "sleep_vram_mb: must be >= 0, got -1"),
    ("sim: {load_s: .inf}", "sim.load_s: must be a finite number, got inf"),
])
def test_numbers_must_be_finite_and_within_bounds(tmp_path, line, message):
    got = only(problems(tmp_path, {"x/a.yaml": GOOD + line + "\n"}))
    assert got.startswith("presets/x/a.yaml:6:") and got.endswith(message), got


def test_sleep_on_idle_has_an_upper_bound(tmp_path):
    got = only(problems(tmp_path, {"x/a.yaml": GOOD}, {"m.yaml": "id: m\nname: M\nservices:\n  - {id: a, sleep_on_idle: 99999999}\n"}))
    assert got == "modes/m.yaml:4:28: services[0].sleep_on_idle: must be <= 604800, got 99999999"


# -- shapes ----------------------------------------------------------------------------------------

def test_services_left_empty_is_refused_but_an_explicit_empty_list_is_a_mode(tmp_path):
    got = only(problems(tmp_path / "a", {"x/a.yaml": GOOD}, {"m.yaml": "id: m\nname: M\nservices:\n"}))
    assert got.startswith("modes/m.yaml:3:1: services: is empty"), got
    c = load_catalog(_root(tmp_path / "b", {"x/a.yaml": GOOD}, {"blank.yaml": "id: blank\nname: B\nservices: []\n"}))
    assert c.modes["blank"].services == ()


@pytest.mark.parametrize("key", ["extra_args", "command"])
def test_argument_words_must_be_a_list_not_a_string(tmp_path, key):
    got = only(problems(tmp_path, {"x/a.yaml": GOOD + f"unit_vars:\n  {key}: --max-num-seqs 8\n"}))
    assert got.startswith(f"presets/x/a.yaml:7:{len(key) + 5}: unit_vars.{key}: expected a list of arguments, got a string"), got


def test_argument_words_of_a_list_are_strings_or_numbers(tmp_path):
    got = only(problems(tmp_path, {"x/a.yaml": GOOD + "unit_vars:\n  extra_args: [--n, 4, {a: b}]\n"}))
    assert got.startswith("presets/x/a.yaml:7:24: unit_vars.extra_args[2]: expected a string or a number, got a mapping"), got


def test_tagged_and_date_values_are_refused_not_passed_through(tmp_path):
    got = problems(tmp_path, {"x/a.yaml": GOOD + "unit_vars:\n  task: !secret x\n  when: 2001-02-03\n"})
    assert any(g.startswith("presets/x/a.yaml:7:9: unit_vars.task: expected a string, number, boolean, list or mapping")
               for g in got), got
    assert any(g.startswith("presets/x/a.yaml:8:9: unit_vars.when: expected a string, number") for g in got), got


def test_values_yaml_cannot_build_name_their_line(tmp_path):
    got = only(problems(tmp_path, {"x/a.yaml": GOOD + "unit_vars:\n  when: 2001-13-45\n"}))
    assert got.startswith("presets/x/a.yaml:7:9: YAML error: cannot read this value: month must be in 1..12"), got


def test_recursive_alias_is_refused_not_a_crash(tmp_path):
    got = problems(tmp_path, {"x/a.yaml": GOOD + "unit_vars: &u\n  self: *u\n"})
    assert got and all(g.startswith("presets/x/a.yaml:") for g in got), got


def test_bytes_that_are_not_utf8_name_their_line(tmp_path):
    root = _root(tmp_path, {"x/a.yaml": GOOD})
    (root / "presets" / "x" / "a.yaml").write_bytes(GOOD.encode() + b"description: caf\xe9\n")
    with pytest.raises(CatalogError) as ei:
        load_catalog(root)
    assert [str(p) for p in ei.value.problems] == ["presets/x/a.yaml:6:17: not UTF-8 text"]


# -- inventory ---------------------------------------------------------------------------------------

def inventory_problems(tmp_path: Path, text: str) -> list[str]:
    p = tmp_path / "hosts.yaml"
    p.write_text(text)
    with pytest.raises(CatalogError) as ei:
        load_inventory(p)
    return [str(x).replace(str(p), "hosts.yaml") for x in ei.value.problems]


@pytest.mark.parametrize("text, expected", [
    ("hosts:\n  - a\n  - b\n", "hosts.yaml:2:3: hosts: expected a mapping, got a list"),
    ("- a\n", "hosts.yaml:1:1: (document): expected a mapping of defaults, hosts and groups, got a list"),
    ("hosts:\n  a:\n    preflight: {factor: lots}\n",
     "hosts.yaml:3:25: hosts.a.preflight.factor: expected a number, got a string ('lots')"),
    ("hosts:\n  a:\n    preflight: {factor: .nan}\n", "hosts.yaml:3:25: hosts.a.preflight.factor: must be a finite number, got nan"),
    ("defaults:\n  preflight: {margin_mb: -5}\n", "hosts.yaml:2:26: defaults.preflight.margin_mb: must be >= 0, got -5"),
    ("hosts:\n  a:\n    gpu: {total_mb: -24564}\n", "hosts.yaml:3:21: hosts.a.gpu.total_mb: must be >= 0, got -24564"),
    ("hosts:\n  a:\n    reserve_mb: -1\n", "hosts.yaml:3:17: hosts.a.reserve_mb: must be >= 0, got -1"),
    ("hosts:\n  a:\n    sim_timings: {load_s: -1}\n", "hosts.yaml:3:27: hosts.a.sim_timings.load_s: must be >= 0, got -1"),
    ("hosts:\n  a:\n    release_timeout_s: .inf\n", "hosts.yaml:3:24: hosts.a.release_timeout_s: must be a finite number, got inf"),
    ("hosts:\n  a:\n    state_dir: \"/x\\n/y\"\n", "hosts.yaml:3:16: hosts.a.state_dir: contains a control character (U+000A, newline)"),
    ("hosts:\n  a:\n    vars: {extra_args: --host 0.0.0.0}\n", "hosts.yaml:3:24: hosts.a.vars.extra_args: expected a list of arguments"),
    ("hosts:\n  a:\n    vars: {hf_home: \"/h\\r\"}\n", "hosts.yaml:3:21: hosts.a.vars.hf_home: contains a control character"),
    ("hosts:\n  a:\n    router_daemon: {api_key_file: ' '}\n", "hosts.yaml:3:35: hosts.a.router_daemon.api_key_file: is empty"),
    ("hosts:\n  a:\n    router_daemon: {port: 99999}\n", "hosts.yaml:3:27: hosts.a.router_daemon.port: port 99999 is outside 1-65535"),
    ("hosts:\n  a:\n    ssh: root@box:70000\n", "hosts.yaml:3:10: hosts.a.ssh: port 70000 is outside 1-65535"),
    ("hosts:\n  a b:\n    sim: true\n", "hosts.yaml:2:3: hosts.a b: not a valid host name"),
    ("hosts:\n  1:\n    sim: true\n", "hosts.yaml:2:3: hosts.1: a host name must be a string, got 1"),
    ("groups:\n  lab: a\n", "hosts.yaml:2:8: groups.lab: expected a list of host names"),
    ("groups:\n  lab: [[a]]\n", "hosts.yaml:2:9: groups.lab[0]: unknown host \"['a']\""),
    ("hosts:\n  a:\n    sim: maybe\n", "hosts.yaml:3:10: hosts.a.sim: expected true, false or auto"),
])
def test_inventory_of_the_wrong_shape_names_file_line_field(tmp_path, text, expected):
    got = only(inventory_problems(tmp_path, text))
    assert got.startswith(expected), got


def test_valid_inventory_figures_still_load(tmp_path):
    p = tmp_path / "hosts.yaml"
    p.write_text("defaults:\n  preflight: {factor: 1.25, margin_mb: 0}\nhosts:\n  a:\n    gpu: {total_mb: 80000}\n"
                 "    router_daemon: {port: 8788, api_key_file: /etc/gpumod/key}\n    sim_timings: {load_s: 0.1}\n")
    h = load_inventory(p).hosts["a"]
    assert (h.preflight_factor, h.preflight_margin_mb, h.gpu_total_mb) == (1.25, 0, 80000)
    assert h.router_daemon == {"port": 8788, "bind": "127.0.0.1", "api_key_file": "/etc/gpumod/key"}
    assert h.sim_settings.load_s == 0.1


def test_empty_inventory_file_is_the_local_host(tmp_path):
    p = tmp_path / "hosts.yaml"
    p.write_text("# nothing yet\n")
    assert list(load_inventory(p).hosts) == ["local", "_ssh_defaults"]


# -- through the CLI: exit code 2, file:line: field, no traceback --------------------------------------

def test_cli_refuses_an_injected_directive_without_a_traceback(sim_host):
    sim_host.write_preset("embedding", "emb", 'id: emb\nname: "x\\nExecStartPre=/bin/sh -c evil"\ndriver: vllm\nport: 9\nvram_mb: 1\n')
    code, out, err = sim_host.inv("mode.switch", "--name", "blank")
    assert code == 2, (out, err)
    assert "presets/embedding/emb.yaml:2:7: name: contains a control character (U+000A, newline)" in err
    assert "Traceback" not in out + err


def test_cli_refuses_an_inventory_whose_hosts_is_a_list(sim_host):
    (sim_host.root / "inventory" / "hosts.yaml").write_text("hosts:\n  - local\n")
    code, out, err = sim_host.inv("status")
    assert code == 2, (out, err)
    assert "hosts.yaml:2:3: hosts: expected a mapping, got a list" in err
    assert "Traceback" not in out + err


# -- API keys ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("key, why", [(" ", "is blank"), ("", "is blank"), ("\n", "is blank"),
                                      ("ab cd", "contains spaces"), ("k\u00e9y", "non-ASCII"), ("a\x00b", "control")])
def test_unusable_api_keys_are_refused_naming_their_source(key, why):
    from gpumod_tasks.apikey import checked_api_key
    from gpumod_tasks.errors import SettingInvalid

    with pytest.raises(SettingInvalid) as ei:
        checked_api_key(key, "/etc/gpumod/key")
    assert str(ei.value).startswith("the API key from /etc/gpumod/key ") and why in str(ei.value)


def test_an_api_key_file_keeps_its_key_without_the_newline():
    from gpumod_tasks.apikey import checked_api_key

    assert checked_api_key("s3cret-Key_1\n", "f") == "s3cret-Key_1"


def test_router_refuses_a_key_file_holding_one_space(sim_host, tmp_path, monkeypatch):
    key_file = tmp_path / "key"
    key_file.write_text(" \n")
    monkeypatch.setenv("GPUMOD_ROUTER_API_KEY_FILE", str(key_file))
    monkeypatch.delenv("GPUMOD_ROUTER_API_KEY", raising=False)
    code, out, err = sim_host.inv("router.serve", "--bind", "0.0.0.0", "--port", "1")
    assert code == 2, out + err
    assert f"the API key from {key_file} is blank" in err
    assert "Traceback" not in out + err


def test_a_host_that_is_not_a_mapping_is_named_at_its_key(tmp_path):
    got = only(inventory_problems(tmp_path, "hosts:\n  local:\n    sim: true\n  box: 5\n"))
    assert got == "hosts.yaml:4:8: hosts.box: expected a mapping of settings, got an integer (5)"
