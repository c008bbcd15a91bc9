"""The broker message that asks a worker to run a task: its name, its priorities, and how to
read the task id back out of a message as the broker stores it (for the sweep's look into the
queue)."""

from __future__ import annotations

import base64
import binascii
import json

PROCESS_TASK = "amseg.process_task"

# Kombu's Redis transport serves the lowest number first (0..9, lists per step of 3); the
# embedded file queue serves PRIORITY_FIRST and below before the rest. New tasks go behind the
# queue; a task handed back after a fault goes before it, so it keeps its place.
PRIORITY_FIRST = 0
PRIORITY_NORMAL = 5


def message_task_id(payload: dict) -> str | None:
    """The task id a stored message asks for (Celery's message protocol 2, JSON body), or None
    for any other message."""
    try:
        if payload["headers"]["task"] != PROCESS_TASK:
            return None
        body = payload["body"]
        if payload["properties"].get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return str(args[0])
    except (KeyError, IndexError, TypeError, ValueError, binascii.Error):
        return None
