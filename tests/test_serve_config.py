"""The settings of `pneumo serve` have one source, `ServeConfig`: every field is a flag, a
PNEUMO_<NAME> variable and a key of a --config TOML file, with flags over the environment over
the file over the defaults; a bad value anywhere exits 2 saying where it came from, every
problem at once (a misspelled PNEUMO_ variable or file key too, with the setting meant); keys
are never shown; `--print-config` needs no server stack; a server configured by a file and its
environment alone serves with those values, in each of its --workers processes."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import tomllib

from pneumo_onnx.engine.cli import main
from pneumo_onnx.engine.errors import UsageError
from pneumo_onnx.engine.serve.config import ServeConfig, schema, settings
from pneumo_onnx.engine.serve.config_sources import resolve
from pneumo_onnx.engine.serve.setting import env_name, flag
from tests.server_process import ServerProcess

DERIVED = {"api_keys", "admin_keys", "load_before_serving"}  # by `pneumo serve`, not settings
# What a setting needs beside it to be valid.
PARTNERS: dict[str, dict[str, object]] = {
    "ssl_certfile": {"ssl_keyfile": Path("partner.pem")},
    "ssl_keyfile": {"ssl_certfile": Path("partner.pem")},
    "replicas": {"ray": True},
    "autoscale": {"ray": True},
}
EXAMPLES = {"autoscale": "1:3", "database": "postgresql://pneumo@127.0.0.1:5432/shared"}
USER_KEY = "user-0123456789abcdef"
ADMIN_KEY = "admin-0123456789abcdef"
SECRET = "secret-0123456789abcdef"


@pytest.fixture(autouse=True)
def no_pneumo_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No PNEUMO_ variable of the machine running the tests reaches them."""
    for variable in list(os.environ):
        if variable.startswith("PNEUMO_"):
            monkeypatch.delenv(variable)


def printed(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    """The effective settings `pneumo serve ARGV --print-config` prints (a TOML file)."""
    assert main(["serve", *argv, "--print-config"]) == 0
    return tomllib.loads(capsys.readouterr().out)


def example(name: str, folder: Path) -> object:
    """A valid value of setting `name` that is not its default (a path: a key file)."""
    kind, setting = schema()[name]
    default = getattr(ServeConfig(), name)
    if name in EXAMPLES:
        return EXAMPLES[name]
    if setting.choices:
        return next(c for c in setting.choices if c != default)
    if kind.base is bool:
        return not default
    if kind.base is int:
        return (default or 1) + 1
    if kind.base is float:
        return (default or 1.0) * 2
    if kind.base is tuple:
        return ("10.0.0.1", "10.0.0.2")
    if kind.base is Path:
        (folder / "keys.txt").write_text(f"{USER_KEY}\n")
        return folder / "keys.txt"
    return "example"


def as_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)


def as_plain(value: object) -> object:
    """As TOML (and JSON) write it."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def test_flags_beat_the_environment_beat_the_file_beat_the_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "serve.toml"
    file.write_text("max_batch = 10\nport = 9001\ncache-size = 5\nlog_images = true\n")
    monkeypatch.setenv("PNEUMO_MAX_BATCH", "20")
    monkeypatch.setenv("PNEUMO_PORT", "9002")
    monkeypatch.setenv("PNEUMO_LOG_IMAGES", "1")
    got = printed(capsys, "--config", str(file), "--max-batch", "30", "--no-log-images")
    assert (got["max_batch"], got["port"], got["cache_size"]) == (30, 9002, 5)
    assert got["log_images"] is False  # a flag turns off what the environment turned on
    assert got["max_queue"] == ServeConfig().max_queue
    sources = resolve({"max_batch": 30}, file).sources
    assert sources["max_batch"] == "flag --max-batch"
    assert sources["port"] == "env PNEUMO_PORT"
    assert sources["cache_size"] == f"file {file}"
    assert sources["max_queue"] == "default"
    monkeypatch.setenv("PNEUMO_CONFIG", str(file))  # the file named by the environment
    assert printed(capsys)["cache_size"] == 5


def test_every_field_is_a_documented_setting_or_derived_by_the_server() -> None:
    """A field added to ServeConfig without its Setting (help, bounds) fails here."""
    fields = schema()
    assert {name for name, (_, setting) in fields.items() if not setting.settable} == DERIVED
    assert all(setting.help.strip() for _, setting in fields.values())
    assert list(settings()) == [name for name in fields if name not in DERIVED]


@pytest.mark.parametrize("name", list(settings()))
def test_every_setting_has_a_flag_a_variable_and_a_file_key(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    value = example(name, tmp_path)
    partner = PARTNERS.get(name, {})
    by_env = resolve(partner, environ={env_name(name): as_text(value)})
    assert getattr(by_env.config, name) == value
    assert by_env.sources[name] == f"env {env_name(name)}"
    file = tmp_path / "serve.toml"
    file.write_text(f"{name} = {json.dumps(as_plain(value))}\n")
    by_file = resolve(partner, file, environ={})
    assert getattr(by_file.config, name) == value and by_file.sources[name] == f"file {file}"
    if isinstance(value, bool):
        given = [flag(name) if value else "--no-" + flag(name)[2:]]
    else:
        given = [flag(name), as_text(value)]
    for other, partner_value in partner.items():
        given += [flag(other)] if partner_value is True else [flag(other), str(partner_value)]
    if schema()[name][1].secret:  # said to be set, never shown
        assert main(["serve", *given, "--print-config"]) == 0
        out = capsys.readouterr().out
        assert f"# {name}: set (flag {flag(name)}; redacted)" in out and str(value) not in out
    else:
        assert printed(capsys, *given)[name] == as_plain(value)
    assert main(["serve", "--help"]) == 0
    shown = "".join(capsys.readouterr().out.split())  # argparse wraps at spaces and hyphens
    assert flag(name) in shown and "".join(schema()[name][1].help.split()) in shown


def test_help_states_the_sources_and_their_order(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--help"]) == 0
    out = capsys.readouterr().out
    shown = " ".join(out.split())
    assert (
        "lowest precedence first: the defaults shown above < a TOML file (--config FILE.toml, "
        "or $PNEUMO_CONFIG) < the environment < these flags"
    ) in shown
    assert "\n  PNEUMO_MAX_BATCH=64 PNEUMO_PROTECT_HEALTH=true pneumo serve\n" in out  # as written


def test_old_flag_names_keep_working(capsys: pytest.CaptureFixture[str]) -> None:
    assert printed(capsys, "--decode-threads", "3")["decode_workers"] == 3
    assert printed(capsys, "--protect-health", "--forwarded-allow-ips", "*")["protect_health"]


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"PNEUMO_MAX_BATCH": "abc"}, "PNEUMO_MAX_BATCH: expected a whole number, got 'abc'"),
        ({"PNEUMO_LOG_IMAGES": "maybe"}, "PNEUMO_LOG_IMAGES: expected true or false"),
        ({"PNEUMO_WORKERS": " "}, "PNEUMO_WORKERS: expected a whole number, got nothing"),
        ({"PNEUMO_MAX_BATCH": "0"}, "--max-batch must be at least 1 (from PNEUMO_MAX_BATCH)"),
        ({"PNEUMO_DEVICE": "tpu"}, "--device must be one of cpu, cuda (from PNEUMO_DEVICE)"),
        ({"PNEUMO_HEADER_TIMEOUT": "nan"}, "--header-timeout must be a finite number (from"),
        (
            {"PNEUMO_MAX_UPLOAD_MB": "64", "PNEUMO_MAX_INFLIGHT_MB": "32"},
            "--max-inflight-mb must be at least --max-upload-mb (from PNEUMO_MAX_INFLIGHT_MB)",
        ),
        ({"PNEUMO_SSL_KEYFILE": "k.pem"}, "--ssl-keyfile is given without --ssl-certfile"),
        (
            {"PNEUMO_MAX_BATH": "8"},
            "PNEUMO_MAX_BATH is not a setting (did you mean PNEUMO_MAX_BATCH?)",
        ),
        (
            {"PNEUMO_API_KEY": SECRET},
            "PNEUMO_API_KEY is not a setting (did you mean PNEUMO_API_KEYS?)",
        ),
        (
            {"PNEUMO_DECODE_THREADS": "4"},
            "PNEUMO_DECODE_THREADS is not a setting (did you mean PNEUMO_DECODE_WORKERS?)",
        ),
    ],
    ids=[
        "not-int",
        "not-bool",
        "empty",
        "range",
        "choice",
        "nan",
        "pair",
        "tls",
        "typo",
        "key",
        "old",
    ],
)
def test_bad_environment_values_exit_2_naming_the_variable(
    environ: dict[str, str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for variable, value in environ.items():
        monkeypatch.setenv(variable, value)
    assert main(["serve", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and SECRET not in err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_batch = \n", "not a valid TOML file: Invalid value (at line 1"),
        ("max_bacth = 64\n", "'max_bacth' is not a setting (did you mean max_batch?)"),
        ("max_batch = '64'\n", "max_batch: expected a whole number, got a string"),
        ("max_batch = 6.5\n", "max_batch: expected a whole number, got a float"),
        ("log-images = 1\n", "log-images: expected true or false, got an integer"),
        ("forwarded_allow_ips = '10.0.0.1'\n", "expected a list of strings, got a string"),
        ("[server]\nport = 1\n", "'server' is not a setting"),
        (f'api_keys = ["{SECRET}"]\n', "keys are never read from a config file: use PNEUMO_API"),
        (f'api_key = "{SECRET}"\n', "'api_key' is not a setting"),
        ("max-batch = 1\nmax_batch = 2\n", "'max_batch' names a setting given twice"),
        ("max_batch = 0\n", "--max-batch must be at least 1 (from {file})"),
        (
            "decode_threads = 4\n",
            "'decode_threads' is not a setting (did you mean decode_workers?)",
        ),
    ],
    ids=[
        "syntax",
        "unknown",
        "string",
        "float",
        "bool",
        "list",
        "table",
        "keys",
        "key-typo",
        "twice",
        "range",
        "old-name",
    ],
)
def test_bad_config_files_exit_2_naming_the_file_and_key(
    text: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "serve.toml"
    file.write_text(text)
    assert main(["serve", "--config", str(file), "--print-config"]) == 2
    err = capsys.readouterr().err
    assert message.format(file=file) in err and str(file) in err
    assert SECRET not in err and "Traceback" not in err


def test_a_missing_config_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--config", str(tmp_path / "nope.toml"), "--print-config"]) == 2
    assert "cannot read the config file" in capsys.readouterr().err


def test_every_problem_is_reported_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(UsageError) as e:
        ServeConfig(max_batch=0, max_delay_ms=2000.0, preprocessing="turbo", rate_burst=0)
    for part in (
        "--max-batch must be at least 1",
        "--max-delay-ms must be between 0 and 1000",
        "--preprocessing must be one of auto, fast, reference",
        "--rate-burst must be at least 1",
    ):
        assert part in e.value.message
    file = tmp_path / "serve.toml"
    file.write_text("port = 70000\nmax_queu = 1\n")
    monkeypatch.setenv("PNEUMO_MAX_BATCH", "many")
    assert main(["serve", "--config", str(file), "--rate-limit", "-1", "--print-config"]) == 2
    err = capsys.readouterr().err
    for part in (
        "'max_queu' is not a setting (did you mean max_queue?)",
        "PNEUMO_MAX_BATCH: expected a whole number, got 'many'",
        f"--port must be between 0 and 65535 (from {file})",
        "--rate-limit must be at least 0",
    ):
        assert part in err, err
    assert "--rate-limit must be at least 0 (from" not in err  # typed: no source to name


def test_print_config_names_sources_hides_keys_and_reads_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = tmp_path / "admin-keys.txt"
    keys.write_text(f"{ADMIN_KEY}  # the operator\n")
    monkeypatch.setenv("PNEUMO_API_KEYS", USER_KEY)
    monkeypatch.setenv("PNEUMO_RATE_LIMIT", "2.5")
    monkeypatch.setenv("PNEUMO_MATRIX_EVAL", "1")  # another tool's: named, not applied
    argv = ["serve", "--admin-key-file", str(keys), "--max-delay-ms", "3", "--print-config"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert USER_KEY not in out and ADMIN_KEY not in out
    assert "# api_keys: 1 key from PNEUMO_API_KEYS (redacted)" in out
    assert f"# admin_keys: 1 key from {keys} (redacted)" in out
    assert "rate_limit = 2.5  # 1/s; env PNEUMO_RATE_LIMIT" in out
    assert "max_delay_ms = 3.0  # ms; flag --max-delay-ms" in out
    assert "max_batch = 32  # default" in out
    assert "# model_repo: not set (default)" in out
    assert "# PNEUMO_MATRIX_EVAL is not a setting: ignored" in out
    effective = resolve({"admin_key_file": keys, "max_delay_ms": 3.0}).config
    saved = tmp_path / "effective.toml"
    saved.write_text(out)  # what a container keeps: the same server from the file alone
    assert resolve({}, saved, environ={"PNEUMO_API_KEYS": USER_KEY}).config == effective


def test_units_are_converted_once_and_the_config_travels_as_json() -> None:
    config = ServeConfig(
        max_upload_mb=2.0,
        max_inflight_mb=3.0,
        max_job_mb=4.0,
        job_store_mb=5.0,
        max_delay_ms=250.0,
        max_request_mpx=90.0,
        max_decode_mpx=100.0,
        forwarded_allow_ips=("10.0.0.1",),
        state_dir=Path("elsewhere"),
        api_keys=(USER_KEY,),
    )
    assert (config.max_upload_bytes, config.max_inflight_bytes) == (2 * 2**20, 3 * 2**20)
    assert (config.max_job_bytes, config.job_store_bytes) == (4 * 2**20, 5 * 2**20)
    assert (config.max_delay_s, config.max_delay_us) == (0.25, 250_000)
    assert (config.max_request_pixels, config.max_decode_pixels) == (90_000_000, 100_000_000)
    assert config.decode_limits.max_input == config.max_upload_bytes
    assert ServeConfig.from_json(config.to_json()) == config
    assert USER_KEY not in repr(config)


def test_serve_itself_exits_2_on_a_bad_variable_without_starting(tmp_path: Path) -> None:
    env = {**os.environ, "PNEUMO_MAX_QUEUE": "lots"}
    done = subprocess.run(
        [sys.executable, "-m", "pneumo_onnx.engine.cli", "serve", "--state-dir", "s"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "error: PNEUMO_MAX_QUEUE: expected a whole number, got 'lots'" in done.stderr
    assert not (tmp_path / "s").exists()


def test_print_config_runs_as_a_command_without_the_server_stack(tmp_path: Path) -> None:
    """`pneumo serve --print-config` in a process of its own, from a file and the
    environment; in a second one where FastAPI and uvicorn cannot be imported, the same: the
    settings need neither."""
    file = tmp_path / "serve.toml"
    file.write_text("max_batch = 12\nprotect_health = true\n")
    env = {**os.environ, "PNEUMO_CONFIG": str(file), "PNEUMO_API_KEYS": USER_KEY}
    env["PNEUMO_MAX_QUEUE"] = "99"
    command = [sys.executable, "-m", "pneumo_onnx.engine.cli", "serve", "--port", "9100"]
    done = subprocess.run(
        [*command, "--print-config"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    got = tomllib.loads(done.stdout)
    assert (got["max_batch"], got["max_queue"], got["port"]) == (12, 99, 9100)
    assert got["protect_health"] is True and "api_keys" not in got
    assert USER_KEY not in done.stdout and "1 key from PNEUMO_API_KEYS (redacted)" in done.stdout
    blocked = (
        "import sys; sys.modules['fastapi'] = sys.modules['uvicorn'] = None\n"
        "from pneumo_onnx.engine.cli import main\n"
        "sys.exit(main(['serve', '--print-config']))"
    )
    bare = subprocess.run(
        [sys.executable, "-c", blocked], env=env, capture_output=True, text=True, timeout=60
    )
    assert bare.returncode == 0, bare.stderr
    assert tomllib.loads(bare.stdout)["max_batch"] == 12


@pytest.fixture
def configured_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """Two worker processes configured by a TOML file and the environment, no flag at all
    (the port too comes from the environment)."""
    file = tmp_path / "serve.toml"
    file.write_text(
        "workers = 2\n"
        "max_batch = 7  # the environment says otherwise, and wins\n"
        "max-delay-ms = 3\n"
        "header_timeout = 1\n"
        "decode_workers = 1\n"
        "protect_health = true\n"
        "state_dir = 'from-file'\n"
    )
    env = {"PNEUMO_CONFIG": str(file), "PNEUMO_MAX_BATCH": "9", "PNEUMO_API_KEYS": USER_KEY}
    srv = ServerProcess(tmp_path, env=env, port_by_env=True, ready_key=USER_KEY)
    srv.start(timeout=120)
    yield srv
    assert srv.stop() == 0


def test_a_server_configured_by_a_file_and_its_environment(
    configured_server: ServerProcess,
) -> None:
    srv = configured_server
    user = {"X-API-Key": USER_KEY}
    for _ in range(6):  # whichever worker process answers, it has the settings
        assert httpx.get(f"{srv.url}/health", timeout=10).status_code == 401  # the file's
        assert httpx.get(f"{srv.url}/health", headers=user, timeout=10).status_code == 200
        r = httpx.get(f"{srv.url}/v2/models/pneumonia/config", headers=user, timeout=10)
        assert r.json()["max_batch_size"] == 9  # the environment over the file
        assert r.json()["dynamic_batching"]["max_queue_delay_microseconds"] == 3000
    # The header deadline reaches the worker processes too (in uvicorn's protocol factory, not
    # the environment): idle sockets are closed after 1 s, not the default 10.
    idle = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(6)]
    started = time.monotonic()
    try:
        for s in idle:
            s.settimeout(9.0)
            with contextlib.suppress(ConnectionResetError):
                assert s.recv(1024) == b""
    finally:
        for s in idle:
            s.close()
    assert time.monotonic() - started < 5.0
    assert (srv.cwd / "from-file" / "jobs.db").is_file()
    log = srv.log_text()
    assert "max_batch=9 (env PNEUMO_MAX_BATCH)" in log and "header_timeout=1.0 (file " in log
    assert USER_KEY not in log
