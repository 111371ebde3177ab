"""`inv mcp.serve --http`: no public bind without a token; with one, requests without it get 401;
Host and Origin are checked (DNS rebinding); the server reports gpumod's version; httpx's per-request
lines stay out of its stderr."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import anyio
import httpx
from conftest import REPO, free_ports, run_cli


def test_mcp_http_refuses_a_public_bind_without_a_token(sim_host, monkeypatch, tmp_path):
    monkeypatch.delenv("GPUMOD_MCP_TOKEN", raising=False)
    monkeypatch.delenv("GPUMOD_MCP_TOKEN_FILE", raising=False)
    for argv in (["--host", "0.0.0.0"], ["--host", "10.1.2.3"], ["--host", "0.0.0.0", "--token", "  "]):
        code, _, err = run_cli(["mcp.serve", "--http", *argv])
        assert code == 2 and "without a token" in err, (argv, err)
    monkeypatch.setenv("GPUMOD_MCP_TOKEN_FILE", str(tmp_path / "missing"))
    code, _, err = run_cli(["mcp.serve", "--http", "--host", "0.0.0.0"])
    assert code == 2 and "cannot read the MCP token file" in err and "missing" in err


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "mcp.serve exited"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("mcp.serve did not listen")


def test_mcp_http_token_host_and_origin(sim_host, tmp_path):
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    from gpumod_tasks.mcp_server import gpumod_version

    assert sim_host.inv("mode.switch", "--name", "rag")[0] == 0  # running services: status probes answer
    (tmp_path / "token").write_text("t0k-secret\n")
    port = free_ports(1)[0]
    errlog = open(tmp_path / "stderr", "w+")
    env = {**os.environ, "PYTHONPATH": str(REPO), "GPUMOD_MCP_TOKEN_FILE": str(tmp_path / "token")}
    env.pop("GPUMOD_MCP_TOKEN", None)
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from gpumod_tasks.program import main; sys.exit(main())",
                             "mcp.serve", "--http", "--port", str(port), "--allowed-host", "gpubox.lan"],
                            env=env, cwd=str(REPO), stdout=subprocess.DEVNULL, stderr=errlog)
    try:
        wait_port(port, proc)
        url = f"http://127.0.0.1:{port}/mcp"
        head = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
        ping = b'{"jsonrpc": "2.0", "id": 1, "method": "ping"}'
        auth = {"authorization": "Bearer t0k-secret"}
        r = httpx.post(url, content=ping, headers=head, trust_env=False)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        r = httpx.post(url, content=ping, headers={**head, "authorization": "Bearer wrong"}, trust_env=False)
        assert r.status_code == 401
        r = httpx.post(url, content=ping, headers={**head, "authorization": b"Bearer t\xf6k"}, trust_env=False)
        assert r.status_code == 401
        r = httpx.post(url, content=ping, headers={**head, **auth, "host": "evil.example"}, trust_env=False)
        assert r.status_code == 421
        r = httpx.post(url, content=ping, headers={**head, **auth, "origin": "http://evil.example"}, trust_env=False)
        assert r.status_code == 403
        # an allowed name passes the front door and the SDK's own DNS-rebinding check alike
        r = httpx.post(url, content=ping, headers={**head, **auth, "host": f"gpubox.lan:{port}"}, trust_env=False)
        assert r.status_code not in (401, 403, 421), r.text

        async def session():
            client = create_mcp_http_client(headers=auth)
            async with client, streamable_http_client(url, http_client=client) as (rd, wr), ClientSession(rd, wr) as s:
                init = await s.initialize()
                for _ in range(3):  # each probes every service over httpx
                    status = await s.call_tool("gpu_mode_status", {})
                    assert not status.is_error, status.content
                return init

        init = anyio.run(session)
        assert init.server_info.name == "gpumod" and init.server_info.version == gpumod_version() != ""
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    errlog.seek(0)
    err = errlog.read()
    assert "HTTP Request:" not in err, err[-2000:]
