"""Settings: sizes, algorithms, the config file, precedence and start-up refusals."""

from __future__ import annotations

import importlib.metadata
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import IN_CI

from bucketdav.settings import (
    SETTINGS,
    FreeSpace,
    SettingError,
    format_size,
    load_settings,
    parse_env_file,
    parse_free_space,
    parse_size,
)

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("32mb", 32 * 1024**2),
        ("32MB", 32 * 1024**2),
        ("1Gb", 1024**3),
        ("10kb", 10240),
        ("12345", 12345),
        (" 7 mb ", 7 * 1024**2),
        ("0", 0),
    ],
)
def test_parse_size_reads_units_in_any_case(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "mb", "-1", "1.5mb", "10 pb", "ten", "1e6"])
def test_parse_size_refuses_what_it_cannot_read(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_format_size_reads_back():
    for size in (0, 1, 1023, 1024, 32 * 1024**2, 5 * 1024**3 + 1):
        assert parse_size(format_size(size)) == size


def test_parse_free_space_bytes_and_percent():
    assert parse_free_space("2%") == FreeSpace(percent=2.0)
    assert parse_free_space("1gb").bytes_for(10**12) == 1024**3
    assert parse_free_space("10%").bytes_for(1000) == 100
    with pytest.raises(ValueError):
        parse_free_space("150%")


def test_load_settings_defaults_match_the_earlier_service():
    settings = load_settings(environ={})
    assert settings.archive_dir == Path("/tmp/bucket")
    assert settings.checksum_type == "md5"
    assert settings.max_content_length == 32 * 1024**2
    assert settings.archive_uri is None
    assert settings.port == 8080 and settings.host == "127.0.0.1"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CHECKSUM_TYPE", "shake_128"),
        ("CHECKSUM_TYPE", "nope"),
        ("MAX_CONTENT_LENGTH", "big"),
        ("BUCKETDAV_PORT", "70000"),
        ("BUCKETDAV_EXTRACT_MAX_FILES", "0"),
        ("BUCKETDAV_MIN_FREE", "x%"),
        ("REPLICATE_3", "user/${Username"),
        ("REPLICATE_0", "plain/only"),
        ("REPLICATE_9", "../${User}"),
    ],
)
def test_load_settings_bad_value_names_the_setting(name, value):
    with pytest.raises(SettingError) as caught:
        load_settings(environ={name: value})
    assert str(caught.value).startswith(f"{name}=")
    assert caught.value.name == name


def test_load_settings_precedence_flags_over_env_over_file():
    file_values = {"BUCKETDAV_PORT": "1000", "CHECKSUM_TYPE": "sha1", "ARCHIVE_URI": "u"}
    environ = {"BUCKETDAV_PORT": "2000", "CHECKSUM_TYPE": "SHA256"}
    settings = load_settings(
        environ=environ,
        file_values=file_values,
        flags={"BUCKETDAV_PORT": "3000", "BUCKETDAV_HOST": None},
    )
    assert settings.port == 3000
    assert settings.checksum_type == "sha256"
    assert settings.archive_uri == "u"


def test_parse_env_file_reads_docker_env_file_format():
    text = "# comment\n\nA=1\n  B = two words \nC=x=y\nEMPTY=\n"
    assert parse_env_file(text) == {"A": "1", "B": " two words ", "C": "x=y", "EMPTY": ""}
    with pytest.raises(SettingError):
        parse_env_file("no equals sign here")


def test_default_config_file_documents_every_setting_with_its_default():
    values = parse_env_file((REPO / "config" / "bucketdav.env").read_text())
    assert values == {s.name: s.default for s in SETTINGS}
    text = (REPO / "config" / "bucketdav.env").read_text()
    assert "REPLICATE_0" in text
    assert load_settings(environ={}, file_values=values) == load_settings(environ={})


def run_cli(*args, env=None, timeout=30):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("BUCKETDAV_", "ARCHIVE_"))}
    return subprocess.run(
        [sys.executable, "-m", "bucketdav", *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"CHECKSUM_TYPE": "crc99"}, "CHECKSUM_TYPE"),
        ({"MAX_CONTENT_LENGTH": "lots"}, "MAX_CONTENT_LENGTH"),
        ({"REPLICATE_2": "a/${B}/${"}, "REPLICATE_2"),
    ],
)
def test_cli_serve_bad_setting_stops_with_one_line(tmp_path, env, names):
    result = run_cli("serve", "--port", "0", env={"ARCHIVE_DIR": str(tmp_path), **env})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and names in lines[0]


def test_cli_serve_unusable_archive_dir_stops(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    result = run_cli("serve", "--port", "0", env={"ARCHIVE_DIR": str(tmp_path / "file" / "x")})
    assert result.returncode == 2
    assert "ARCHIVE_DIR" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_cli_serve_store_on_two_file_systems_stops(tmp_path):
    other = Path(os.environ.get("TMPDIR_SHM", "/dev/shm"))
    if not other.is_dir() or other.stat().st_dev == tmp_path.stat().st_dev:
        message = f"needs a second file system at {other} (TMPDIR_SHM names another)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    elsewhere = other / f"bucketdav-test-{os.getpid()}"
    elsewhere.mkdir(exist_ok=True)
    try:
        (tmp_path / "store").mkdir()
        (tmp_path / "store" / "blob").symlink_to(elsewhere)
        result = run_cli("serve", "--port", "0", env={"ARCHIVE_DIR": str(tmp_path / "store")})
        assert result.returncode == 2
        assert "one file system" in result.stderr
    finally:
        elsewhere.rmdir()


def test_cli_config_file_is_read_and_env_overrides_it(tmp_path):
    config = tmp_path / "my.env"
    config.write_text("MAX_CONTENT_LENGTH=nonsense\nCHECKSUM_TYPE=sha1\n")
    result = run_cli("serve", "--config", str(config), env={"ARCHIVE_DIR": str(tmp_path)})
    assert result.returncode == 2 and "MAX_CONTENT_LENGTH" in result.stderr
    result = run_cli("serve", "--config", str(tmp_path / "missing.env"))
    assert result.returncode == 2 and "BUCKETDAV_CONFIG" in result.stderr


def test_cli_config_file_settings_reach_the_server(live_server_factory, tmp_path):
    config = tmp_path / "my.env"
    config.write_text("CHECKSUM_TYPE=sha1\nMAX_CONTENT_LENGTH=2kb\n")
    server = live_server_factory(args=["--config", str(config)], MAX_CONTENT_LENGTH="3kb")
    body = server.request("GET", "/config").json()
    assert body["CHECKSUM_TYPE"] == "sha1"
    assert body["MAX_CONTENT_LENGTH"] == 3 * 1024


def test_cli_serve_port_in_use_stops_with_one_line_and_leaves_the_store_alone(tmp_path):
    store = tmp_path / "store"
    (store / "staging").mkdir(parents=True)
    (store / "staging" / "in-flight").write_bytes(b"another server's upload")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run_cli("serve", "--port", str(port), env={"ARCHIVE_DIR": str(store)})
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"bucketdav: cannot listen on 127.0.0.1:{port}: address already in use"
    ]
    assert (store / "staging" / "in-flight").read_bytes() == b"another server's upload"


def test_cli_version_prints_the_package_version():
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout == f"bucketdav {importlib.metadata.version('bucketdav')}\n"
