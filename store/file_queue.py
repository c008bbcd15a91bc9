"""The embedded broker (`amseg up`): kombu's filesystem transport, a message a file, with the
three changes "no task lost, none flooded" needs.

- A message's file name carries the task it asks for, so the sweep sees which tasks have a
  message waiting by listing the folder (`waiting_task_ids`), without reading a file.
- A message sent first (priority `PRIORITY_FIRST`: a task handed back after a fault) and a
  message given back by a worker (a restore or a requeue) sort before every other message, so
  an interrupted task keeps its place at the head of the queue. Names sort by send time.
- A file appears under its final name only once written (write, then rename), so a worker
  never reads half a message.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

from kombu.transport import filesystem
from kombu.utils.json import dumps

from store.messages import PRIORITY_FIRST, message_task_id

# Names sort in this order: kombu's own names (digits: left from an older version) first,
# then the ones sent first, then the others.
_FIRST, _NORMAL = "a", "b"
_NO_TASK = "-"


def message_file_name(queue: str, payload: dict) -> str:
    """`<rank><microseconds>_<task id>_<unique>.<queue>.msg`: kombu's filter reads the part
    after the first dot as the queue."""
    rank = _FIRST if _priority(payload) <= PRIORITY_FIRST else _NORMAL
    task_id = message_task_id(payload) or _NO_TASK
    return f"{rank}{time.time_ns() // 1000:017d}_{task_id}_{uuid.uuid4().hex}.{queue}.msg"


def waiting_task_ids(folder: Path, queue: str) -> list[str]:
    """The task of every message waiting in `queue` (one entry a message), oldest first."""
    suffix = f".{queue}.msg"
    ids = []
    for name in sorted(os.listdir(folder)):
        stem, dot, rest = name.partition(".")
        if dot and f".{rest}" == suffix and stem[:1] in (_FIRST, _NORMAL):
            task_id = stem.split("_")[1]
            if task_id != _NO_TASK:
                ids.append(task_id)
    return ids


def _priority(payload: dict) -> int:
    try:
        return int(payload["properties"]["priority"])
    except (KeyError, TypeError, ValueError):
        return PRIORITY_FIRST + 1


class Channel(filesystem.Channel):
    def _put(self, queue: str, payload: dict, **kwargs: object) -> None:
        folder = Path(self.data_folder_out)
        final = folder / message_file_name(queue, payload)
        partial = folder / f".partial-{final.name}"  # no queue matches a name with a leading dot
        partial.write_bytes(dumps(payload).encode())
        os.replace(partial, final)

    def _restore(self, message: object) -> None:
        """A message a worker gives back (a requeue, or unacknowledged at shutdown) goes to the
        head of the queue: its task was interrupted, not new."""
        delivery_info = message.delivery_info
        payload = message.serializable()
        payload["redelivered"] = True
        payload["properties"] = {**payload["properties"], "priority": PRIORITY_FIRST}
        for queue in self._lookup(delivery_info["exchange"], delivery_info["routing_key"]):
            self._put(queue, payload)

    def _restore_at_beginning(self, message: object) -> None:
        self._restore(message)


class Transport(filesystem.Transport):
    Channel = Channel
