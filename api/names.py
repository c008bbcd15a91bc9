"""A task's name, as a person knows the slide: the uploaded file's name, cleaned so it is safe
to store, show and put in a download's file name; downloads are named after it
(`slide7.tif` -> `slide7_mask.png`), or after the task id when it has none."""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import quote
from uuid import UUID

from store.tasks import MAX_NAME_LENGTH

# Characters that file systems or the Content-Disposition header do not take.
_UNSAFE = re.compile(r'[<>:"/\\|?*;]')
_IMAGE_SUFFIX = re.compile(r"\.(png|tiff?|jpe?g)$", re.IGNORECASE)
_NOT_ASCII_SAFE = re.compile(r"[^A-Za-z0-9._ ()+,=@\[\]{}~#$%&'!-]")


def clean_name(raw: str | None) -> str | None:
    """The file's own name (a path's last part), without control or unsafe characters, at most
    MAX_NAME_LENGTH characters (the extension kept); None when nothing is left."""
    if not raw:
        return None
    name = unicodedata.normalize("NFC", raw)
    name = re.split(r"[\\/]", name)[-1]  # some clients send the whole path
    name = "".join(ch if ch.isprintable() else " " for ch in name)
    name = " ".join(_UNSAFE.sub("_", name).split()).strip(" .")
    if len(name) > MAX_NAME_LENGTH:
        suffix = match.group(0) if (match := _IMAGE_SUFFIX.search(name)) else ""
        name = name[: MAX_NAME_LENGTH - len(suffix)].rstrip(" .") + suffix
    return name or None


def download_name(task_name: str | None, task_id: UUID | str, what: str) -> str:
    """`<slide>_<what>` (`slide7_mask.png`): the name without its image extension, or the task
    id for a task without a name."""
    stem = _IMAGE_SUFFIX.sub("", task_name) if task_name else ""
    return f"{stem or task_id}_{what}"


def content_disposition(filename: str) -> str:
    """`inline` with the name for every browser: an ASCII fallback and the UTF-8 original
    (RFC 6266 / 5987)."""
    ascii_name = unicodedata.normalize("NFKD", filename).encode("ascii", "ignore").decode()
    ascii_name = _NOT_ASCII_SAFE.sub("_", ascii_name) or "download"
    header = f'inline; filename="{ascii_name}"'
    if ascii_name != filename:
        header += f"; filename*=UTF-8''{quote(filename, safe='')}"
    return header
