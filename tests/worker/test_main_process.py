"""The worker's main process: "stopping" follows Celery's flags as Celery reads them (exit code
0 included), and a parent's death kills the pool's children before the task is handed back."""

import subprocess
import sys

import pytest
from celery.worker import state

from worker import main_process


@pytest.mark.parametrize(
    ("flag", "stopping"), [(None, False), (False, False), (0, True), (1, True)]
)
def test_a_stop_request_with_exit_code_0_counts(
    monkeypatch: pytest.MonkeyPatch, flag: object, stopping: bool
) -> None:
    monkeypatch.setattr(state, "should_stop", flag)
    assert main_process.worker_stopping() is stopping


SLEEPER = "import time; time.sleep(60)"
# A parent that starts a sleeping child, says its pid and sleeps: not this test's own children.
PARENT = (
    "import subprocess, sys, time;"
    f"child = subprocess.Popen([sys.executable, '-c', {SLEEPER!r}]);"
    "print(child.pid, flush=True); time.sleep(60)"
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_children_are_killed_and_gone() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        assert main_process._children(parent.pid) == [child]
        main_process._kill_children(parent.pid)
        assert not main_process._is_running(child)  # dead (a zombie its parent never reaps)
    finally:
        parent.kill()
        parent.wait()
