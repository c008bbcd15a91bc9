"""A real headless browser (Debian's chromium, driven by Selenium through chromium-driver) and
the embedded service (`amseg up`) for the page's tests. Nothing is downloaded: Selenium is given
the system's driver and browser, and the browser cannot resolve any host but this machine."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
AMSEG = Path(sys.executable).with_name("amseg")
SCREENSHOTS = Path(
    os.environ.get("AMSEG_SCREENSHOTS", Path(__file__).resolve().parent / "screenshots")
)
BROWSER_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,900",
    # Offline: no host but this machine resolves, so anything the page tried to load from the
    # internet would fail (and the tests look for it).
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
)


def _require_browser() -> None:
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if not missing:
        return
    why = f"{' and '.join(missing)} missing (apt packages chromium, chromium-driver)"
    if os.environ.get("CI"):
        pytest.fail(f"{why}: `make test` installs them with scripts/ensure-browser.sh")
    pytest.skip(f"browser tests skipped: {why}; scripts/ensure-browser.sh installs them")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Chromium, headless, with a fresh profile; its console is kept for the tests to read."""
    _require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tempfile.TemporaryDirectory(prefix="amseg-chromium-")
    for flag in (*BROWSER_FLAGS, f"--user-data-dir={profile.name}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_script_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        profile.cleanup()


@dataclass
class RunningService:
    base_url: str
    data_dir: Path
    process: subprocess.Popen


def start_service(data_dir: Path, **environment: str) -> RunningService:
    """`amseg up` (API and one worker, embedded) on a free port; waits until it is healthy."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(environment)
    process = subprocess.Popen(
        [AMSEG, "up", "--port", str(port), "--data-dir", str(data_dir)],
        env=env,
        stdout=(data_dir.parent / f"{data_dir.name}.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    service = RunningService(f"http://127.0.0.1:{port}", data_dir, process)
    deadline = time.monotonic() + 90
    while True:
        assert process.poll() is None, "amseg up exited; see its log beside the data dir"
        try:
            if httpx.get(f"{service.base_url}/health", timeout=2).status_code == 200:
                return service
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "amseg up did not become healthy in 90 s"
        time.sleep(0.3)


def stop_service(service: RunningService) -> None:
    service.process.send_signal(signal.SIGINT)
    try:
        service.process.wait(timeout=40)
    except subprocess.TimeoutExpired:
        os.killpg(service.process.pid, signal.SIGKILL)
        service.process.wait(timeout=10)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    _require_browser()  # skip before starting anything
    running = start_service(tmp_path_factory.mktemp("web") / "data")
    try:
        yield running
    finally:
        stop_service(running)


@pytest.fixture(scope="session")
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS
