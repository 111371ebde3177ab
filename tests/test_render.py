"""Unit rendering without a host: command lines per driver, safety refusals, systemd quoting."""

from __future__ import annotations

import pytest
from conftest import REPO

from gpumod_tasks.catalog.model import DockerSpec, Driver, Preset, SleepMode
from gpumod_tasks.errors import RenderError
from gpumod_tasks.inventory import HostSpec
from gpumod_tasks.render import (
    HostFacts,
    docker_argv,
    gpu_memory_utilization,
    real_exec,
    render_unit,
    systemd_env,
    systemd_word,
)

HOST = HostSpec(name="box", sim=False, gpu_total_mb=24564)
FACTS = HostFacts(gpu_total_mb=24564, sim=False, state_dir="/var/lib/gpumod")


def preset(**kw) -> Preset:
    base = dict(id="svc", name="Svc", driver=Driver.VLLM, port=8000, vram_mb=12000, model_id="org/model",
                model_size_mb=5000, file="presets/x/svc.yaml")
    base.update(kw)
    return Preset(**base)


def unit_lines(p: Preset, host: HostSpec = HOST) -> list[str]:
    return render_unit(p, host, FACTS, str(REPO)).splitlines()


def test_gpu_memory_utilization_never_below_the_presets_megabytes():
    # 12000 / 24564 = 0.48852...; rounded *up* to 3 decimals
    assert gpu_memory_utilization(12000, 24564) == 0.489
    assert gpu_memory_utilization(12000, 24564) * 24564 >= 12000
    assert gpu_memory_utilization(30000, 24564) == 0.99
    with pytest.raises(RenderError, match="gpu.total_mb"):
        gpu_memory_utilization(1000, 0)


def test_vllm_sleep_flags_only_with_sleep_support_and_loopback_bind():
    sleepy = real_exec(preset(supports_sleep=True, sleep_mode=SleepMode.L1, context_size=16384), HOST, FACTS)
    assert sleepy.argv[:3] == ("vllm", "serve", "org/model")
    a = list(sleepy.argv)
    assert a[a.index("--host") + 1] == "127.0.0.1" and a[a.index("--port") + 1] == "8000"
    assert a[a.index("--max-model-len") + 1] == "16384" and a[a.index("--gpu-memory-utilization") + 1] == "0.489"
    assert "--enable-sleep-mode" in a and ("VLLM_SERVER_DEV_MODE", "1") in sleepy.env
    plain = real_exec(preset(), HOST, FACTS)
    assert "--enable-sleep-mode" not in plain.argv and all(k != "VLLM_SERVER_DEV_MODE" for k, _ in plain.env)
    # a host-wide var cannot open every server to the network; only the preset can
    wide = HostSpec(name="box", sim=False, gpu_total_mb=24564, vars={"bind": "0.0.0.0"})
    a = list(real_exec(preset(), wide, FACTS).argv)
    assert a[a.index("--host") + 1] == "127.0.0.1"
    a = list(real_exec(preset(unit_vars={"bind": "0.0.0.0"}), HOST, FACTS).argv)
    assert a[a.index("--host") + 1] == "0.0.0.0"


def test_llamacpp_single_and_router_units():
    single = real_exec(preset(driver=Driver.LLAMACPP, model_path="/m/a.gguf", context_size=8192, unit_vars={"n_gpu_layers": 99}), HOST, FACTS)
    assert ("GGML_CUDA_NO_PINNED", "1") in single.env
    a = list(single.argv)
    assert a[0] == "llama-server" and a[a.index("--model") + 1] == "/m/a.gguf" and a[a.index("--ctx-size") + 1] == "8192"
    assert a[a.index("--host") + 1] == "127.0.0.1"
    router = real_exec(preset(driver=Driver.LLAMACPP, sleep_mode=SleepMode.ROUTER, supports_sleep=True, model_path="/models/gguf/x.gguf",
                              unit_vars={"models_max": 2, "models_preset": "/etc/models.ini"}), HOST, FACTS)
    a = list(router.argv)
    assert ("GGML_CUDA_NO_PINNED", "1") in router.env
    assert a[a.index("--models-dir") + 1] == "/models/gguf" and a[a.index("--models-max") + 1] == "2"
    assert a[a.index("--models-preset") + 1] == "/etc/models.ini" and "--no-models-autoload" in a and "--model" not in a
    text = "\n".join(unit_lines(preset(driver=Driver.LLAMACPP, model_path="/m/a.gguf")))
    assert 'Environment="GGML_CUDA_NO_PINNED=1"' in text


def test_fastapi_runs_in_its_venv():
    p = preset(driver=Driver.FASTAPI, unit_vars={"command": ["python", "-m", "srv", "--port", "{port}"], "venv": "/opt/v"})
    # no {host} in the command: the listen address is appended as --host (the uvicorn convention)
    assert real_exec(p, HOST, FACTS).argv == ("/opt/v/bin/python", "-m", "srv", "--port", "8000", "--host", "127.0.0.1")
    with pytest.raises(RenderError, match="unit_vars.command"):
        real_exec(preset(driver=Driver.FASTAPI), HOST, FACTS)


@pytest.mark.parametrize("spec, refused", [
    (DockerSpec(image="i", extra_args=("--privileged",)), "--privileged"),
    (DockerSpec(image="i", network="host"), "network 'host'"),
    (DockerSpec(image="i", network="macvlan0"), "macvlan"),
    (DockerSpec(image="i", volumes=("/:/host",)), "mounting /"),
    (DockerSpec(image="i", volumes=("/etc:/etc:ro",)), "mounting /etc"),
    (DockerSpec(image="i", volumes=("/var/run/docker.sock:/var/run/docker.sock",)), "docker.sock"),
])
def test_docker_refuses_unsafe_settings(spec, refused):
    with pytest.raises(RenderError) as e:
        docker_argv(preset(driver=Driver.DOCKER, docker=spec))
    assert refused in str(e.value) and "presets/x/svc.yaml" in str(e.value)


def test_docker_run_line():
    a = docker_argv(preset(driver=Driver.DOCKER, docker=DockerSpec(image="img:1", ports=("8000:8000",), volumes=("/data/m:/m",),
                                                                      environment=(("A", "b c"),))))
    assert a[:5] == ["docker", "run", "--rm", "--name", "gpumod-svc"]
    assert a[a.index("-p") + 1] == "127.0.0.1:8000:8000"  # published on loopback unless an address is given
    # the value comes from the private environment file: never on the command line (ps shows it)
    assert a[a.index("-v") + 1] == "/data/m:/m" and a[a.index("-e") + 1] == "A" and a[-1] == "img:1"
    assert "b c" not in " ".join(a)


def test_every_unit_has_preflight_restart_timeout_and_header():
    p = preset(startup_timeout=123, env=(("HF_TOKEN_PATH", "/x y"),))
    lines = unit_lines(p)
    assert lines[0].startswith("# Generated by gpumod from presets/x/svc.yaml (service svc)")
    assert "ExecStartPre=/var/lib/gpumod/bin/gpumod-preflight svc 5000 1.1 1024 /proc/meminfo" in lines
    assert "Restart=on-failure" in lines and "TimeoutStartSec=123" in lines
    assert 'Environment="CUDA_VISIBLE_DEVICES=0"' in lines and "EnvironmentFile=/var/lib/gpumod/env/gpumod-svc.service.env" in lines
    assert not any("/x y" in ln for ln in lines)  # the preset's env is in the 0600 file only
    assert "WantedBy=multi-user.target" in lines
    user = HostSpec(name="box", sim=False, gpu_total_mb=24564, scope="user", vars={"hf_home": "/srv/hf"})
    lines = unit_lines(p, user)
    assert "WantedBy=default.target" in lines and 'Environment="HF_HOME=/srv/hf"' in lines


def test_systemd_quoting_by_hand():
    # % is a specifier everywhere; $ expands in ExecStart but not in Environment=; see the real-systemd
    # round trip in test_systemd.py for the proof that the process receives the words verbatim
    assert systemd_word("plain/path:1") == "plain/path:1"
    assert systemd_word("100%") == '"100%%"'
    assert systemd_word('say "hi" $X') == '"say \\"hi\\" $$X"'
    assert systemd_env("K", 'a "b" 5% $Y \\') == '"K=a \\"b\\" 5%% $Y \\\\"'


# -- listen address, Docker isolation, control characters, secrets -----------------------------------


@pytest.mark.parametrize("driver, extra", [(Driver.VLLM, {}), (Driver.LLAMACPP, {"model_path": "/m/a.gguf"})])
@pytest.mark.parametrize("words", [["--host", "0.0.0.0"], ["--host=0.0.0.0"], ["--port", "80"], ["--uds", "/tmp/s"]])
def test_extra_args_never_move_the_listen_address(driver, extra, words):
    wide = HostSpec(name="box", sim=False, gpu_total_mb=24564, vars={"extra_args": words})
    with pytest.raises(RenderError, match="host box: vars.extra_args.*refused.*unit_vars.bind"):
        real_exec(preset(driver=driver, **extra), wide, FACTS)
    with pytest.raises(RenderError, match="presets/x/svc.yaml: unit_vars.extra_args"):
        real_exec(preset(driver=driver, unit_vars={"extra_args": words}, **extra), HOST, FACTS)
    ok = HostSpec(name="box", sim=False, gpu_total_mb=24564, vars={"extra_args": ["--hostname-note", "x"]})
    assert "--hostname-note" in real_exec(preset(driver=driver, **extra), ok, FACTS).argv
    with pytest.raises(RenderError, match="must be a list"):
        real_exec(preset(driver=driver, unit_vars={"extra_args": "--foo"}, **extra), HOST, FACTS)


def test_fastapi_listen_address_placeholder_and_convention():
    cmd = ["python", "-m", "srv", "--bind", "{host}:{port}"]
    assert real_exec(preset(driver=Driver.FASTAPI, unit_vars={"command": cmd, "bind": "10.0.0.5"}), HOST, FACTS).argv[-2:] == (
        "--bind", "10.0.0.5:8000")
    none = real_exec(preset(driver=Driver.FASTAPI, unit_vars={"command": ["srv"], "host_flag": ""}), HOST, FACTS)
    assert none.argv == ("srv",)
    with pytest.raises(RenderError, match=r"write \{host\}"):
        real_exec(preset(driver=Driver.FASTAPI, unit_vars={"command": ["srv", "--host", "0.0.0.0"]}), HOST, FACTS)
    with pytest.raises(RenderError, match=r"write \{host\}"):
        real_exec(preset(driver=Driver.FASTAPI, unit_vars={"command": ["srv", "--host=0.0.0.0"]}), HOST, FACTS)
    with pytest.raises(RenderError, match=r"write \{host\}"):
        real_exec(preset(driver=Driver.FASTAPI, unit_vars={"command": ["srv", "--host", "0.0.0.0"], "host_flag": ""}), HOST, FACTS)
    placed = real_exec(preset(driver=Driver.FASTAPI, unit_vars={"command": ["srv", "--host", "{host}"]}), HOST, FACTS)
    assert placed.argv == ("srv", "--host", "127.0.0.1")


@pytest.mark.parametrize("extra_args", [
    ("--network", "host"), ("--network=host",), ("--net=host",), ("--pid", "host"), ("--pid=host",), ("--ipc=host",),
    ("--userns", "host"), ("--cap-add", "ALL"), ("--cap-add=SYS_ADMIN",), ("--privileged",), ("--privileged=true",),
    ("-v", "/:/host"), ("-v/:/host",), ("--volume=/etc:/x",), ("--mount", "type=bind,src=/,dst=/h"), ("-itp", "80:80"),
    ("-P",), ("--publish", "0.0.0.0:80:80"), ("--security-opt", "seccomp=unconfined"), ("--device", "/dev/mem"),
    ("--volumes-from", "other"),
])
def test_docker_extra_args_that_bypass_isolation_are_refused(extra_args):
    with pytest.raises(RenderError, match="docker.extra_args .*refused"):
        docker_argv(preset(driver=Driver.DOCKER, docker=DockerSpec(image="i", extra_args=extra_args)))


@pytest.mark.parametrize("volume", ["/etc/../etc:/x", "//etc:/x", "/etc/:/x", "/var:/x", "/data/../:/x", "/etc/ssh:/x:ro",
                                    "/run:/r", "/proc/1/root:/r", "/home:/h", "/srv/../var/run/docker.sock:/s"])
def test_docker_volume_sources_are_normalized_before_the_check(volume):
    with pytest.raises(RenderError, match="docker.volumes .*refused"):
        docker_argv(preset(driver=Driver.DOCKER, docker=DockerSpec(image="i", volumes=(volume,))))


def test_docker_allows_plain_settings():
    a = docker_argv(preset(driver=Driver.DOCKER, docker=DockerSpec(
        image="i", volumes=("/data/models:/m:ro", "/home/me/hf:/hf", "named:/cache"),
        extra_args=("--shm-size", "8g", "-e", "X=1", "-it", "--pid", "container:x"))))
    assert a[-1] == "i" and "--shm-size" in a


@pytest.mark.parametrize("field", ["name", "env", "argv", "file"])
def test_control_characters_never_reach_a_unit(field):
    evil = "x\nExecStartPre=/bin/touch /tmp/pwned"
    kw = {"name": {"name": evil}, "env": {"env": (("A", evil),)}, "file": {"file": evil},
          "argv": {"unit_vars": {"extra_args": [evil]}}}[field]
    with pytest.raises(RenderError, match="control character"):
        render_unit(preset(**kw), HOST, FACTS, str(REPO))
    if field in ("env", "argv"):  # the supervisor's script is built from the same ExecSpec
        with pytest.raises(RenderError, match="presets/x/svc.yaml: .*control character"):
            real_exec(preset(**kw), HOST, FACTS)


def test_private_environment_file_and_masking():
    from gpumod_tasks.envfile import env_file_text, mask_env, masked_preset

    spec = real_exec(preset(env=(("HF_TOKEN", "hf_abcdefghijklmnopqrstuvwxyz"), ("MODE", "fast"))), HOST, FACTS)
    assert dict(spec.private_env) == {"HF_TOKEN": "hf_abcdefghijklmnopqrstuvwxyz", "MODE": "fast"}
    assert all(k not in ("HF_TOKEN", "MODE") for k, _ in spec.env)  # gpumod's own variables only
    assert spec.env_file == "/var/lib/gpumod/env/gpumod-svc.service.env"
    text = env_file_text((("A", "it's $HOME"),))
    assert "A='it'\"'\"'s $HOME'" in text
    with pytest.raises(RenderError, match="control character"):
        env_file_text((("A", "x\ny"),))
    with pytest.raises(RenderError, match="name 'A B' is refused"):
        env_file_text((("A B", "x"),))
    # a changed value changes the unit (so an install sees it), without the value being in it
    u1 = render_unit(preset(env=(("HF_TOKEN", "hf_one_value_of_the_token"),)), HOST, FACTS, str(REPO))
    u2 = render_unit(preset(env=(("HF_TOKEN", "hf_another_value_of_token"),)), HOST, FACTS, str(REPO))
    assert u1 != u2 and "hf_one" not in u1
    shown = dict(mask_env([("HF_TOKEN", "hf_abcdefghijklmnopqrstuvwxyz"), ("X_API_KEY", "short"), ("MODE", "fast"),
                           ("PLAIN", "sk-proj-0123456789abcdef")]))
    assert shown["MODE"] == "fast" and shown["X_API_KEY"] == "****"
    assert "abcdefghij" not in shown["HF_TOKEN"] and "0123456789" not in shown["PLAIN"]
    d = masked_preset({"env": [("HF_TOKEN", "hf_abcdefghijklmnopqrstuvwxyz")], "docker": {"environment": [("PASSWORD", "hunter2")]}})
    assert d["env"][0][1].startswith("hf_****") and d["docker"]["environment"] == [("PASSWORD", "****")]
