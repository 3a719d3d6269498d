"""Unit tests of openbits.config: TOML loading, overrides and default paths."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from openbits.config import (
    Config,
    client_socket_path,
    default_socket_path,
    default_state_dir,
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No XDG or OPENBITS variables from the caller; HOME is a temporary directory."""
    for name in ("XDG_RUNTIME_DIR", "XDG_STATE_HOME", "OPENBITS_SOCKET"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    return home


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "openbits.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


# -- defaults --------------------------------------------------------------------------------


def test_default_state_dir_without_xdg(clean_env: Path) -> None:
    assert default_state_dir() == str(clean_env / ".local" / "state" / "openbits")


def test_default_state_dir_with_xdg_state_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", "/var/lib/xdg")
    assert default_state_dir() == "/var/lib/xdg/openbits"


def test_default_state_dir_ignores_empty_xdg_state_home(
    monkeypatch: pytest.MonkeyPatch, clean_env: Path
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", "")
    assert default_state_dir() == str(clean_env / ".local" / "state" / "openbits")


def test_default_socket_with_xdg_runtime_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert default_socket_path() == "/run/user/1000/openbits/openbits.sock"
    assert default_socket_path("/some/state") == "/run/user/1000/openbits/openbits.sock"


def test_default_socket_without_xdg_runtime_dir_is_in_the_state_dir(clean_env: Path) -> None:
    assert default_socket_path("/some/state") == "/some/state/openbits.sock"
    assert default_socket_path() == str(clean_env / ".local" / "state" / "openbits" / "openbits.sock")


def test_default_socket_ignores_empty_xdg_runtime_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", "")
    assert default_socket_path("/some/state") == "/some/state/openbits.sock"


def test_client_socket_path_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert client_socket_path() == "/run/user/1000/openbits/openbits.sock"
    monkeypatch.setenv("OPENBITS_SOCKET", "/env/sock")
    assert client_socket_path() == "/env/sock"
    assert client_socket_path("/explicit/sock") == "/explicit/sock"


def test_config_defaults(clean_env: Path) -> None:
    c = Config()
    state = str(clean_env / ".local" / "state" / "openbits")
    assert c.state_dir == state
    assert c.socket == state + "/openbits.sock"
    assert c.db_path == state + "/jobs.sqlite"
    assert c.max_jobs_per_user == 60
    assert c.max_jobs_per_machine == 300
    assert c.max_files_per_job == 200
    assert c.max_concurrent_background_jobs == 1
    assert c.finished_retention_s == 7 * 86400
    assert c.read_timeout_s == 60.0
    assert c.checkpoint_interval_s == 1.0
    assert c.checkpoint_bytes == 64 * 1024 * 1024
    assert c.segment_min_bytes == 8 * 1024 * 1024  # (SPEC §9)


def test_config_socket_follows_the_given_state_dir() -> None:
    c = Config(state_dir="/srv/openbits")
    assert c.socket == "/srv/openbits/openbits.sock"
    assert c.db_path == "/srv/openbits/jobs.sqlite"


def test_config_socket_uses_xdg_runtime_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/42")
    assert Config(state_dir="/srv/openbits").socket == "/run/user/42/openbits/openbits.sock"


# -- Config.load -----------------------------------------------------------------------------


def test_load_without_file_is_defaults() -> None:
    assert Config.load() == Config()


def test_load_flat_keys(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'state_dir = "/srv/ob"\nmax_jobs_per_user = 5\nread_timeout_s = 2.5\nadmin_group = "wheel"\n',
    )
    c = Config.load(path)
    assert c.state_dir == "/srv/ob"
    assert c.socket == "/srv/ob/openbits.sock"
    assert c.max_jobs_per_user == 5
    assert c.read_timeout_s == 2.5
    assert c.admin_group == "wheel"


def test_load_keys_under_openbits_table(tmp_path: Path) -> None:
    path = write(tmp_path, '[openbits]\nsocket = "/run/ob.sock"\nmax_concurrent_background_jobs = 3\n')
    c = Config.load(path)
    assert c.socket == "/run/ob.sock"
    assert c.max_concurrent_background_jobs == 3


@pytest.mark.parametrize(
    "text",
    ["max_job_per_user = 5\n", "[openbits]\nbogus = 1\n", "[other]\nx = 1\n"],
    ids=["typo-flat", "unknown-in-table", "unknown-table"],
)
def test_load_rejects_unknown_keys(tmp_path: Path, text: str) -> None:
    with pytest.raises(ValueError, match="unknown"):
        Config.load(write(tmp_path, text))


def test_load_rejects_top_level_keys_next_to_the_openbits_table(tmp_path: Path) -> None:
    path = write(tmp_path, 'max_jobs_per_user = 5\n[openbits]\nstate_dir = "/srv/ob"\n')
    with pytest.raises(ValueError):
        Config.load(path)


def test_load_rejects_values_of_the_wrong_type(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Config.load(write(tmp_path, 'max_jobs_per_user = "many"\n'))


def test_load_rejects_malformed_toml(tmp_path: Path) -> None:
    with pytest.raises(tomllib.TOMLDecodeError):
        Config.load(write(tmp_path, "max_jobs_per_user = = 5\n"))
    assert issubclass(tomllib.TOMLDecodeError, ValueError)


def test_load_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Config.load(str(tmp_path / "missing.toml"))


def test_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'state_dir = "/from/file"\nmax_jobs_per_user = 5\n')
    c = Config.load(path, state_dir="/from/flag", max_jobs_per_user=9)
    assert c.state_dir == "/from/flag"
    assert c.max_jobs_per_user == 9
    assert c.socket == "/from/flag/openbits.sock"


def test_none_overrides_do_not_replace_file_values(tmp_path: Path) -> None:
    path = write(tmp_path, 'state_dir = "/from/file"\n')
    c = Config.load(path, state_dir=None, socket=None)
    assert c.state_dir == "/from/file"
    assert c.socket == "/from/file/openbits.sock"


def test_overrides_without_a_file() -> None:
    c = Config.load(None, socket="/tmp/x.sock", max_files_per_job=3)
    assert c.socket == "/tmp/x.sock"
    assert c.max_files_per_job == 3


# -- the system daemon -----------------------------------------------------------------------


def test_system_defaults(tmp_path: Path) -> None:
    config = Config.load(system=True)
    assert (config.state_dir, config.socket) == ("/var/lib/openbits", "/run/openbits/openbits.sock")
    assert config.socket_mode == 0o666 and config.system


def test_system_settings_give_way_to_the_file_and_flags(tmp_path: Path) -> None:
    path = write(tmp_path, "socket_mode = 0o660\nmax_jobs_per_user = 5\n".replace("0o660", "432"))
    config = Config.load(path, system=True, state_dir=str(tmp_path / "s"))
    assert config.socket_mode == 0o660 and config.max_jobs_per_user == 5
    assert config.state_dir == str(tmp_path / "s") and config.socket == "/run/openbits/openbits.sock"
    assert not Config.load(path).system
