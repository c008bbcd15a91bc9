"""An acquisition's imzML sent with a request (the multipart part `imzml`): streamed to a file a
megabyte at a time and checked from its first bytes only (XML whose root is <mzML>), like an
image is from its header. The worker reads the spectrum positions and fails the task in words
when they cannot be read. The .ibd binary is never needed."""

from __future__ import annotations

from pathlib import Path

import anyio
from fastapi import Request
from starlette.datastructures import UploadFile

from api.problems import Problem

IMZML_PART = "imzml"
# The root element must show within this many bytes (after the XML declaration and comments).
SNIFF_BYTES = 64 * 1024
_WRITE_CHUNK = 1024 * 1024
_BOM = b"\xef\xbb\xbf"


async def save_imzml_part(field: object, path: Path) -> Path:
    """Copy the multipart part `imzml` to `path` and check that it looks like imzML; a 422
    or 415 problem when it is not a file part, is empty, or is not imzML."""
    if not isinstance(field, UploadFile):
        raise Problem(
            422,
            f"the multipart part '{IMZML_PART}' must be a file (the acquisition's .imzML)",
            kind="invalid-imzml",
        )
    head = b""
    with path.open("wb") as handle:
        while chunk := await field.read(_WRITE_CHUNK):
            if len(head) < SNIFF_BYTES:
                head += chunk[: SNIFF_BYTES - len(head)]
            await anyio.to_thread.run_sync(handle.write, chunk)
    check_imzml_head(head)
    return path


def check_imzml_head(head: bytes) -> None:
    """An imzML file is XML whose root element is <mzML> (the worker reads the rest)."""
    if not head:
        raise Problem(422, f"the '{IMZML_PART}' part is empty", kind="empty-imzml")
    text = head.removeprefix(_BOM).lstrip()
    if not text.startswith(b"<") or not (b"<mzML" in text or b":mzML" in text):
        raise Problem(
            415,
            f"the '{IMZML_PART}' part is not an imzML file (XML whose root element is <mzML>): "
            "send the acquisition's .imzML (the .ibd is not needed)",
            kind="not-imzml",
        )


async def receive_imzml(request: Request, path: Path) -> Path | None:
    """The imzML of a multipart body whose only part is `imzml` (POST /tasks/{id}/register),
    saved to `path`; None when the request sends no multipart body."""
    content_type = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if content_type != "multipart/form-data":
        return None
    try:
        form = await request.form(max_files=1, max_fields=16)
    except Problem:  # the body guard's 408, 413 or client-closed, raised while reading
        raise
    except Exception as error:  # malformed multipart framing
        raise Problem(422, f"malformed multipart body: {error}", kind="invalid-multipart") from None
    try:
        field = form.get(IMZML_PART)
        if field is None:
            raise Problem(
                422,
                f"the multipart body has no part named '{IMZML_PART}' (the acquisition's .imzML)",
                kind="missing-imzml",
            )
        return await save_imzml_part(field, path)
    finally:
        await form.close()
