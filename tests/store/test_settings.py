"""Settings: embedded defaults, environment overrides, and refusal of unsafe values."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from store.settings import Settings, get_settings

SETTINGS_VARIABLES = [
    "DATA_DIR", "DATABASE_URL", "REDIS_URL", "S3_BUCKET", "S3_ENDPOINT_URL",
    "S3_PUBLIC_ENDPOINT_URL", "S3_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    "MAX_UPLOAD_BYTES", "MAX_PIXELS", "API_KEYS", "TASK_STALE_AFTER_S", "TASK_MAX_ATTEMPTS",
]  # fmt: skip
GOOD_KEY = "k" * 32


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own environment must not leak into these tests."""
    for name in SETTINGS_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_defaults_run_without_any_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)

    settings = Settings(_env_file=None)

    assert settings.data_dir == Path("amseg-data")
    assert settings.database_url == f"sqlite:///{tmp_path / 'amseg-data' / 'amseg.sqlite3'}"
    assert settings.redis_url is None
    assert not settings.uses_s3
    assert settings.max_upload_bytes == 512 * 1024 * 1024
    assert settings.max_pixels == 400_000_000
    assert settings.api_keys == []
    assert settings.task_max_attempts >= 1 and settings.task_stale_after_s > 0


def test_environment_overrides_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://amseg@db:5432/amseg")
    monkeypatch.setenv("REDIS_URL", "redis://redis:6379/0")
    monkeypatch.setenv("S3_BUCKET", "amseg")
    monkeypatch.setenv("S3_ENDPOINT_URL", "http://minio:9000")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "minio")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "minio-secret")
    monkeypatch.setenv("MAX_UPLOAD_BYTES", "1000")
    monkeypatch.setenv("API_KEYS", f"{GOOD_KEY}, {'z' * 20}")
    monkeypatch.setenv("TASK_MAX_ATTEMPTS", "5")

    settings = Settings(_env_file=None)

    assert settings.database_url == "postgresql+psycopg://amseg@db:5432/amseg"
    assert settings.redis_url == "redis://redis:6379/0"
    assert settings.uses_s3 and settings.s3_endpoint_url == "http://minio:9000"
    assert settings.aws_secret_access_key.get_secret_value() == "minio-secret"
    assert "minio-secret" not in repr(settings) and GOOD_KEY not in repr(settings)
    assert settings.max_upload_bytes == 1000
    assert settings.api_keys == [GOOD_KEY, "z" * 20]
    assert settings.task_max_attempts == 5


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("MAX_PIXELS=1234\nS3_BUCKET=from-dotenv\n")

    settings = Settings(_env_file=env_file)

    assert settings.max_pixels == 1234 and settings.s3_bucket == "from-dotenv"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MAX_UPLOAD_BYTES", "-1"),
        ("MAX_UPLOAD_BYTES", "0"),
        ("MAX_PIXELS", "-5"),
        ("TASK_STALE_AFTER_S", "0"),
        ("TASK_MAX_ATTEMPTS", "0"),
        ("API_KEYS", "short"),
        ("API_KEYS", f"{GOOD_KEY},has a space in it ok"),
        ("DATABASE_URL", "mysql://x@y/z"),
        ("S3_ENDPOINT_URL", "minio:9000"),
        ("AWS_ACCESS_KEY_ID", "only-half-of-the-pair"),
    ],
)
def test_unsafe_values_are_refused(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)

    with pytest.raises(ValidationError, match=f"(?i){variable}"):
        Settings(_env_file=None)


def test_get_settings_is_read_once() -> None:
    get_settings.cache_clear()
    try:
        assert get_settings() is get_settings()
    finally:
        get_settings.cache_clear()
