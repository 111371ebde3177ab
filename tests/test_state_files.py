"""Every reader of a state file rejects a bad shape naming the file, and blank / status still work."""

from __future__ import annotations

import json
import logging

import pytest

from gpumod_tasks.errors import StateFileInvalid
from gpumod_tasks.sim.ledger import Ledger, LedgerInvalid
from gpumod_tasks.state import History, ModeRecord, check_mode_record, parse_mode_record

GOOD = json.dumps({"mode": "rag", "since": 1700000000.5, "sleep_levels": {"emb": 1}, "last_switch": {"ok": True}})


def test_a_good_record_reads_and_unknown_keys_are_ignored():
    rec = check_mode_record(GOOD[:-1] + ', "written_by": "a newer gpumod"}', "/s/mode.json")
    assert rec == ModeRecord("rag", 1700000000.5, {"emb": 1}, {"ok": True})
    assert check_mode_record('{"mode": null}') == ModeRecord(None)


@pytest.mark.parametrize("text, why", [
    ("", "the file is empty"),
    ('{"mode": "rag", "since": 17', "not JSON (Expecting ',' delimiter at line 1 column 28)"),
    ('["rag"]', "expected a JSON object, got a list"),
    ('"rag"', "expected a JSON object, got a string ('rag')"),
    ('{"mode": 3}', "mode: expected a mode id or null, got a number (3)"),
    ('{"mode": ""}', "mode: expected a mode id or null, got a string ('')"),
    ('{"mode": "rag", "since": "yesterday"}', "since: expected a time in seconds, got a string ('yesterday')"),
    ('{"mode": "rag", "since": NaN}', "since: expected a time in seconds, got a number (nan)"),
    ('{"mode": "rag", "sleep_levels": [1]}', "sleep_levels: expected an object, got a list"),
    ('{"mode": "rag", "sleep_levels": {"emb": "deep"}}', "sleep_levels.emb: expected a sleep level 0-2, got a string ('deep')"),
    ('{"mode": "rag", "sleep_levels": {"emb": true}}', "sleep_levels.emb: expected a sleep level 0-2, got a boolean (true)"),
    ('{"mode": "rag", "last_switch": "ok"}', "last_switch: expected an object, got a string ('ok')"),
    ("[" * 100_000, "not JSON"),
])
def test_a_record_of_the_wrong_shape_is_refused_naming_the_file(text, why):
    with pytest.raises(StateFileInvalid) as ei:
        check_mode_record(text, "/s/mode.json")
    assert str(ei.value).startswith(f"/s/mode.json: not a valid mode record: {why}"), str(ei.value)


def test_the_lenient_reader_treats_a_bad_record_as_unknown_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="gpumod.state"):
        assert parse_mode_record('{"mode": ["rag"]}', "/s/lenient/mode.json") == ModeRecord(None)
    assert "/s/lenient/mode.json: not a valid mode record: mode: expected a mode id or null, got a list" in caplog.text
    assert "treated as unknown" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gpumod.state"):
        parse_mode_record('{"mode": ["rag"]}', "/s/lenient/mode.json")
        assert caplog.text == ""  # the same problem again (a daemon observing every few seconds): said once
        assert parse_mode_record(None, "/s/lenient/mode.json") == ModeRecord(None)
        assert caplog.text == ""  # no file: nothing recorded yet, nothing to warn about
        parse_mode_record("[]", "/s/lenient/mode.json")
    assert "expected a JSON object, got a list" in caplog.text  # a new problem is said again


def test_status_and_blank_still_work_with_a_corrupt_mode_record(sim_host, caplog):
    code, out, err = sim_host.inv("mode.switch", "--name", "rag")
    assert code == 0, out + err
    record = sim_host.state / "mode.json"
    assert json.loads(record.read_text())["mode"] == "rag"
    for bad in ('["rag"]', '{"mode": "rag", "since": "x"', '{"mode": {"id": "rag"}}'):
        record.write_text(bad)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="gpumod.state"):
            code, out, err = sim_host.inv("status")
        assert code == 0, out + err
        assert "Traceback" not in out + err
        assert f"{record}: not a valid mode record" in caplog.text
    code, out, err = sim_host.inv("mode.switch", "--name", "blank")
    assert code == 0, out + err
    assert json.loads(record.read_text())["mode"] == "blank"  # rewritten whole


def test_a_damaged_history_names_its_file(tmp_path):
    path = tmp_path / "history.sqlite"
    path.write_bytes(b"this is not sqlite at all, only text that a full disk left behind" * 20)
    with pytest.raises(StateFileInvalid) as ei:
        History(str(path))
    assert str(ei.value).startswith(f"{path}: not a usable switch history")


# -- the simulated GPU's ledger ---------------------------------------------------------------------

def test_a_truncated_ledger_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "gpu0.json"
    Ledger.create(path, name="G", total_mb=1000).alloc(1, 100, "w")
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    with pytest.raises(LedgerInvalid) as ei:
        Ledger(path).snapshot()
    assert str(ei.value).startswith(f"simulated GPU ledger {path}: truncated or not JSON")


@pytest.mark.parametrize("data, why", [
    ([], "expected a JSON object, got list"),
    ({"total_mb": "24564", "allocs": []}, "total_mb: expected a number of MB, got '24564'"),
    ({"total_mb": 100, "allocs": "none"}, "allocs: expected a list, got str"),
    ({"total_mb": 100, "allocs": [{"pid": "1", "mb": 5}]}, "allocs[0]: expected {pid, mb, ...} with whole numbers"),
    ({"total_mb": 100, "allocs": [{"pid": 1, "mb": -5}]}, "allocs[0]: expected {pid, mb, ...} with whole numbers"),
    ({"total_mb": 100, "release_lag_s": "slow", "allocs": []}, "release_lag_s: expected seconds, got 'slow'"),
])
def test_a_ledger_of_the_wrong_shape_is_refused(tmp_path, data, why):
    path = tmp_path / "gpu0.json"
    path.write_text(json.dumps(data))
    with pytest.raises(LedgerInvalid) as ei:
        Ledger(path).alloc(1, 1)
    assert why in str(ei.value) and str(path) in str(ei.value)


def test_create_keeps_a_corrupt_ledger_aside_and_says_so(tmp_path, capsys):
    path = tmp_path / "gpu0.json"
    path.write_text('{"allocs": [{"pid": 1, "mb": 50')
    led = Ledger.create(path, name="G", total_mb=1000)
    err = capsys.readouterr().err
    assert f"warning: {path}: truncated or not JSON" in err and f"kept as {path}.corrupt and started empty" in err
    assert (tmp_path / "gpu0.json.corrupt").read_text() == '{"allocs": [{"pid": 1, "mb": 50'
    assert led.snapshot().used_mb == 0
    Ledger.create(path, name="G", total_mb=1000)
    assert capsys.readouterr().err == ""  # a good ledger is kept without a word


def test_a_switch_on_a_truncated_ledger_says_so_and_works(sim_host):
    code, out, err = sim_host.inv("sim.up")
    assert code == 0, out + err
    ledger = sim_host.state / "sim" / "gpu0.json"
    ledger.write_text(ledger.read_text()[:10])
    code, out, err = sim_host.inv("mode.switch", "--name", "blank")
    assert code == 0, out + err
    assert f"{ledger}: truncated or not JSON" in err and "kept as" in err
    assert json.loads(ledger.read_text())["allocs"] == []


def test_a_state_path_that_cannot_be_read_is_one_clear_line_not_a_traceback(sim_host):
    """A directory where the mode record belongs (or any OS error reading or writing state): the
    command says which file and why, exit non-zero, and nothing is half-written."""
    h = sim_host
    (h.state / "mode.json").mkdir(parents=True)
    for argv in (("mode.switch", "--name", "rag"), ("status",), ("mode.switch", "--name", "blank")):
        code, out, err = h.inv(*argv)
        assert code != 0 and "Traceback" not in err + out, err
        assert f"cannot read {h.state / 'mode.json'}: Is a directory" in err, err
