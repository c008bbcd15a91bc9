"""Safe defaults when the service starts (issue 37 §4): a refused setting ends it in one line
that never shows the secret; an API reachable from other machines needs a key (`amseg serve`
refuses without one, `amseg up` makes one and prints it once); what `amseg up` stores is
private (0700 directories, 0600 files) unless DATA_UMASK says otherwise."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from api.exposure import is_loopback
from store.settings import Settings, apply_data_umask
from tests.api.test_cli_up import AMSEG, running_up

pytestmark = pytest.mark.slow

WEAK_KEYS = ["hunter2", "aaaaaaaaaaaaaaaaaaaaaaaa", "has a space in it 1234567890"]


def run_amseg(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    """`amseg ARGS` with `env` over a clean service environment."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in ("API_KEYS", "DATABASE_URL", "REDIS_URL", "S3_BUCKET", "PUBLISHED_ADDRESS")
    }
    return subprocess.run(
        [str(AMSEG), *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize("key", WEAK_KEYS, ids=["short", "one-letter", "spaces"])
@pytest.mark.parametrize("command", ["serve", "worker", "up"])
def test_a_weak_key_stops_startup_in_one_line_without_the_key(
    tmp_path: Path, command: str, key: str
) -> None:
    args = ["--data-dir", str(tmp_path / "data")] if command == "up" else []
    run = run_amseg(command, *args, API_KEYS=f"a-fine-key-{'x1y2z3w4' * 3},{key}")

    assert run.returncode == 2, run.stdout + run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith(f"amseg {command}: API_KEYS: ")
    assert key not in run.stdout + run.stderr
    assert "x1y2z3w4" not in run.stdout + run.stderr  # nor the good key beside it


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.7"])
def test_serve_refuses_other_machines_without_a_key(host: str) -> None:
    run = run_amseg("serve", "--host", host, "--port", "1")
    assert run.returncode == 2
    assert len(run.stderr.strip().splitlines()) == 1
    assert "set API_KEYS" in run.stderr


def test_published_on_localhost_needs_no_key() -> None:
    """docker-compose listens on 0.0.0.0 inside its network and publishes on 127.0.0.1."""
    settings = Settings(published_address="127.0.0.1")
    from api.exposure import reachable_from

    assert reachable_from(settings, "0.0.0.0") is None
    assert reachable_from(Settings(), "0.0.0.0") == "0.0.0.0"
    assert [is_loopback(a) for a in ("127.0.0.1", "::1", "localhost", "0.0.0.0", "10.0.0.1")] == [
        True,
        True,
        True,
        False,
        False,
    ]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_amseg_up_beyond_localhost_makes_a_key_prints_it_once_and_keeps_data_private(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    with running_up(data_dir, host="0.0.0.0") as (_, client):
        assert client.get("/tasks").status_code == 401
        key = (data_dir / "api-key").read_text().strip()
        assert client.get("/tasks", headers={"X-API-Key": key}).status_code == 200
        assert client.get("/health").status_code == 200
    assert mode(data_dir) == 0o700
    assert mode(data_dir / "api-key") == 0o600
    assert mode(data_dir / "amseg.sqlite3") == 0o600
    for folder in (data_dir / "broker", data_dir / "broker" / "messages"):
        assert mode(folder) == 0o700


def test_a_configured_umask_shares_the_data(tmp_path: Path) -> None:
    previous = os.umask(0o077)
    try:
        apply_data_umask(Settings(data_umask="022"))
        (tmp_path / "shared").mkdir()
        assert mode(tmp_path / "shared") == 0o755
        apply_data_umask(Settings())
        (tmp_path / "private").mkdir()
        assert mode(tmp_path / "private") == 0o700
    finally:
        os.umask(previous)


@pytest.mark.skipif(sys.platform != "linux", reason="the test reads its output on Linux")
def test_the_generated_key_is_printed_only_the_first_time(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    for run in (1, 2):
        with running_up(data_dir, host="0.0.0.0", capture=True) as (server, _):
            pass
        output = server.stdout.read().decode()
        key = (data_dir / "api-key").read_text().strip()
        assert (key in output) == (run == 1), output
        assert "api-key" in output
