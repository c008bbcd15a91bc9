"""Settings: embedded defaults, environment overrides, and refusal of unsafe values."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from store.settings import Settings, describe_settings_error, get_settings

SETTINGS_VARIABLES = [
    "DATA_DIR", "DATABASE_URL", "REDIS_URL", "S3_BUCKET", "S3_ENDPOINT_URL",
    "S3_PUBLIC_ENDPOINT_URL", "S3_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    "MAX_UPLOAD_BYTES", "MAX_PIXELS", "API_KEYS", "TASK_STALE_AFTER_S", "TASK_MAX_ATTEMPTS",
    "EMBEDDED", "TASK_QUEUE", "TASK_SOFT_TIME_LIMIT_S", "TASK_TIME_LIMIT_S",
    "BROKER_VISIBILITY_TIMEOUT_S", "MODELS_DIR", "SWEEP_INTERVAL_S", "WORKER_DEVICE",
    "ACCURATE_SEGMENTATION", "UPLOAD_IDLE_TIMEOUT_S", "MAX_CONCURRENT_UPLOADS",
    "MAX_DECODED_BYTES", "ALLOWED_HOSTS", "PUBLISHED_ADDRESS", "DATA_UMASK", "VIEW_CACHE_BYTES",
]  # fmt: skip
GOOD_KEY = "good-key-0123456789abcdef"
SECOND_KEY = "second-key-0123456789"


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
    monkeypatch.setenv("API_KEYS", f"{GOOD_KEY}, {SECOND_KEY}")
    monkeypatch.setenv("TASK_MAX_ATTEMPTS", "5")

    settings = Settings(_env_file=None)

    assert settings.database_url == "postgresql+psycopg://amseg@db:5432/amseg"
    assert settings.redis_url == "redis://redis:6379/0"
    assert settings.uses_s3 and settings.s3_endpoint_url == "http://minio:9000"
    assert settings.aws_secret_access_key.get_secret_value() == "minio-secret"
    assert "minio-secret" not in repr(settings) and GOOD_KEY not in repr(settings)
    assert settings.max_upload_bytes == 1000
    assert settings.api_keys == [GOOD_KEY, SECOND_KEY]
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
        ("UPLOAD_IDLE_TIMEOUT_S", "0"),
        ("MAX_CONCURRENT_UPLOADS", "0"),
        ("API_KEYS", "short"),
        ("API_KEYS", "k" * 32),  # long, but one letter
        ("DATA_UMASK", "0999"),
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


def test_embedded_mode_ignores_server_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://db/amseg")
    monkeypatch.setenv("REDIS_URL", "redis://cache:6379/0")
    monkeypatch.setenv("S3_BUCKET", "slides")
    monkeypatch.setenv("EMBEDDED", "1")
    monkeypatch.setenv("DATA_DIR", "/srv/amseg")

    settings = Settings(_env_file=None)

    assert settings.database_url == "sqlite:////srv/amseg/amseg.sqlite3"
    assert settings.broker_url == "filesystem://"
    assert not settings.uses_s3


def test_time_limits_must_nest_inside_the_visibility_timeout() -> None:
    with pytest.raises(ValidationError, match="TASK_TIME_LIMIT_S"):
        Settings(_env_file=None, task_soft_time_limit_s=100, task_time_limit_s=100)
    with pytest.raises(ValidationError, match="BROKER_VISIBILITY_TIMEOUT_S"):
        Settings(_env_file=None, task_time_limit_s=8000, broker_visibility_timeout_s=7200)


def test_named_models_resolve_only_inside_models_dir(tmp_path: Path) -> None:
    (tmp_path / "dan").mkdir()
    (tmp_path / "dan" / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "empty").mkdir()
    settings = Settings(_env_file=None, models_dir=tmp_path)

    assert settings.model_dir_for(None) is None
    assert settings.model_dir_for("default") is None
    assert settings.model_dir_for("dan") == tmp_path / "dan"
    for bad in ("empty", "missing", "../dan", "/etc", ".hidden"):
        with pytest.raises(ValueError, match="known models: default, dan"):
            settings.model_dir_for(bad)
    with pytest.raises(ValueError, match="unknown model"):
        Settings(_env_file=None).model_dir_for("dan")


@pytest.mark.parametrize(
    ("environment", "expected"),
    [
        ({}, False),
        ({"TASK_QUEUE": "gpu"}, True),  # GPU workers have the time
        ({"ACCURATE_SEGMENTATION": ""}, False),  # empty means unset
        ({"ACCURATE_SEGMENTATION": "true"}, True),
        ({"ACCURATE_SEGMENTATION": "0", "TASK_QUEUE": "gpu"}, False),
    ],
)
def test_default_accurate_follows_the_setting_then_the_queue(
    monkeypatch: pytest.MonkeyPatch, environment: dict, expected: bool
) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert Settings(_env_file=None).default_accurate is expected


def test_accurate_segmentation_must_be_a_boolean(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCURATE_SEGMENTATION", "auto")
    with pytest.raises(ValidationError):
        Settings(_env_file=None)


def test_a_refused_setting_is_described_without_its_value(monkeypatch: pytest.MonkeyPatch) -> None:
    weak = "weak-weak-weak-weak"
    monkeypatch.setenv("API_KEYS", f"{GOOD_KEY},{weak}")
    monkeypatch.setenv("DATABASE_URL", "mysql://user:db-password@host/db")
    with pytest.raises(ValidationError) as refused:
        Settings(_env_file=None)
    described = describe_settings_error(refused.value)
    for secret in (weak, GOOD_KEY, "db-password"):
        assert secret not in str(refused.value) and secret not in described
    assert "\n" not in described
    assert "API_KEYS: every API key" in described and "DATABASE_URL: " in described


def test_allowed_hosts_are_a_comma_separated_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALLOWED_HOSTS", "lab.example.org, amseg.local")
    assert Settings(_env_file=None).allowed_hosts == ["lab.example.org", "amseg.local"]


def test_the_viewer_cache_limit_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings(_env_file=None).view_cache_bytes == 64 * 1024**2
    monkeypatch.setenv("VIEW_CACHE_BYTES", "0")  # nothing kept: every tile read from the store
    assert Settings(_env_file=None).view_cache_bytes == 0
    monkeypatch.setenv("VIEW_CACHE_BYTES", "-1")
    with pytest.raises(ValidationError, match="view_cache_bytes"):
        Settings(_env_file=None)
