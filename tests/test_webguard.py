"""The front door's rules as pure functions: Host, Origin, bearer tokens, where secrets come from,
and the router's journald lines."""

from __future__ import annotations

import io
import logging

import pytest

from gpumod_tasks.webguard import Guard, is_json, is_loopback, secret_from


def test_host_rules():
    g = Guard(bind="127.0.0.1", allowed_hosts=("gpubox.lan",))
    for ok in ("127.0.0.1", "127.0.0.1:8787", "localhost:8787", "LOCALHOST", "[::1]:8787", "gpubox.lan", "GPUBOX.LAN:1"):
        assert g.host_ok(ok), ok
    for bad in ("", "evil.example", "evil.example:8787", "10.0.0.5:8787", "gpubox.lan.evil.example", "127.0.0.1.nip.io"):
        assert not g.host_ok(bad), bad
    # a specific bind: its address; a wildcard bind: any address literal, never a foreign name
    assert Guard(bind="10.0.0.5").host_ok("10.0.0.5:8787") and not Guard(bind="10.0.0.5").host_ok("10.0.0.6")
    w = Guard(bind="0.0.0.0")
    assert w.host_ok("10.0.0.6:8787") and w.host_ok("[fe80::1]:8787") and not w.host_ok("evil.example")


def test_origin_and_refusal():
    g = Guard(bind="127.0.0.1")
    assert g.origin_ok("http://127.0.0.1:8787") and g.origin_ok("https://localhost")
    for bad in ("null", "http://evil.example", "file://", "http://user@evil.example", "javascript:alert(1)"):
        assert not g.origin_ok(bad), bad
    assert g.refusal([(b"host", b"localhost:1")]) is None
    assert g.refusal([])[0] == 421
    assert g.refusal([(b"host", b"evil.example")])[0] == 421
    assert g.refusal([(b"host", b"localhost"), (b"origin", b"http://evil.example")])[0] == 403
    assert is_json(b"application/json") and is_json(b"Application/JSON; charset=utf-8")
    assert not is_json(b"text/plain") and not is_json(b"") and not is_json(b"application/jsonx")


def test_tokens_and_secrets(tmp_path, monkeypatch):
    g = Guard(token="s3cret")
    assert g.authorized(b"Bearer s3cret")
    for bad in (b"", b"Bearer s3cre", b"bearer s3cret", b"Bearer s3cr\xe9t", b"Bearer \xff"):
        assert not g.authorized(bad), bad
    assert Guard().authorized(b"")
    monkeypatch.delenv("X_KEY", raising=False)
    monkeypatch.delenv("X_KEY_FILE", raising=False)
    assert secret_from(None, "X_KEY", "key") is None and secret_from(" ", "X_KEY", "key") is None
    assert secret_from(" k ", "X_KEY", "key") == "k"
    monkeypatch.setenv("X_KEY_FILE", str(tmp_path / "k"))
    with pytest.raises(ValueError, match="cannot read the key file"):
        secret_from(None, "X_KEY", "key")
    (tmp_path / "k").write_text("from-file\n")
    assert secret_from(None, "X_KEY", "key") == "from-file"
    monkeypatch.setenv("X_KEY", "from-env")
    assert secret_from(None, "X_KEY", "key") == "from-env" and secret_from("flag", "X_KEY", "key") == "flag"
    assert is_loopback("127.0.0.2") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("gpubox")


def test_router_log_lines_for_journald(monkeypatch):
    from gpumod_tasks.tasks.router import configure_logging

    saved = {n: (lg.handlers[:], lg.propagate, lg.level) for n in ("gpumod", "uvicorn")
             for lg in [logging.getLogger(n)]}
    try:
        monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
        buf = io.StringIO()
        configure_logging("info", buf)
        log = logging.getLogger("gpumod.router")
        log.debug("hidden")
        log.info("switch done")
        log.error("reload refused")
        assert buf.getvalue() == "<6>gpumod.router: switch done\n<3>gpumod.router: reload refused\n"
        monkeypatch.delenv("JOURNAL_STREAM")
        buf = io.StringIO()
        configure_logging("warning", buf)
        log.info("hidden")
        log.warning("careful")
        assert buf.getvalue().endswith(" WARNING gpumod.router: careful\n") and buf.getvalue().count("\n") == 1
    finally:
        for n, (handlers, propagate, level) in saved.items():
            lg = logging.getLogger(n)
            lg.handlers[:], lg.propagate = handlers, propagate
            lg.setLevel(level)
