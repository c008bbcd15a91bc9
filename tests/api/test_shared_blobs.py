"""Deleting a task whose image, mask or tile packs another task reads where they are (a register
task and its source): what another task still holds stays, what nobody holds goes."""

from pathlib import Path
from uuid import uuid4

import pytest

from api.routes.common import delete_blobs
from store.blobs import LocalBlobStore
from store.tasks import Task

PACKS = ("views/image.tiles", "views/mask.tiles", "views/outline.tiles")


def stored(blobs: LocalBlobStore, task_id, names) -> dict[str, str]:
    keys = {name: f"tasks/{task_id}/{name}" for name in names}
    for key in keys.values():
        blobs.put_bytes(key, b"x")
    return keys


@pytest.fixture
def blobs(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs")


def source_and_register(blobs: LocalBlobStore, *, shares_packs: bool) -> tuple[Task, Task]:
    """A segment task and a register task made from it, which reads its image and mask (and its
    tile packs, unless it was made before workers made them and has its own)."""
    source_id, register_id = uuid4(), uuid4()
    keys = stored(blobs, source_id, ["input", "mask.png", "labels.png", *PACKS])
    source = Task(id=source_id, input_key=keys.pop("input"), result_keys=keys)
    own = stored(blobs, register_id, ["labels.png", "views/marks.json"])
    if shares_packs:
        own |= {name: keys[name] for name in PACKS}
    else:
        own |= stored(blobs, register_id, PACKS)
    register = Task(
        id=register_id,
        input_key=source.input_key,
        result_keys={"mask.png": keys["mask.png"], **own},
    )
    return source, register


def held(task: Task) -> set[str]:
    return {task.input_key, *task.result_keys.values()}


def keys_of(blobs: LocalBlobStore) -> set[str]:
    return set(blobs.list_keys("tasks/"))


def test_the_source_keeps_what_its_register_task_reads(blobs: LocalBlobStore) -> None:
    source, register = source_and_register(blobs, shares_packs=True)
    delete_blobs(blobs, source, still_read=held(register))
    assert keys_of(blobs) == held(register)  # its labels went, image, mask and packs stay
    delete_blobs(blobs, register, still_read=set())
    assert keys_of(blobs) == set()


def test_a_register_task_goes_whole_and_leaves_its_source_whole(blobs: LocalBlobStore) -> None:
    source, register = source_and_register(blobs, shares_packs=True)
    delete_blobs(blobs, register, still_read=held(source))
    assert keys_of(blobs) == held(source)


def test_packs_nobody_reads_go_with_their_task(blobs: LocalBlobStore) -> None:
    source, register = source_and_register(blobs, shares_packs=False)
    delete_blobs(blobs, register, still_read=held(source))  # its own packs: nobody reads them
    assert keys_of(blobs) == held(source)

    source, register = source_and_register(blobs, shares_packs=False)
    delete_blobs(blobs, source, still_read=held(register))  # its packs: the register has its own
    assert {key for key in keys_of(blobs) if key.startswith(f"tasks/{source.id}/")} == {
        source.input_key,
        source.result_keys["mask.png"],
    }


def test_a_rerun_gets_its_own_copy_of_the_image_tile_pack(blobs: LocalBlobStore) -> None:
    """A re-run shows the same image: the source's pack is copied to it when it is made (its
    worker then does not make it again); a source without one, or whose pack went, gives none."""
    from types import SimpleNamespace

    from api.routes.common import copy_image_views

    svc = SimpleNamespace(blobs=blobs)
    source_id, rerun_id, bare_id = uuid4(), uuid4(), uuid4()
    keys = stored(blobs, source_id, ["input", PACKS[0]])
    source = Task(id=source_id, input_key=keys.pop("input"), result_keys=keys)
    copy_image_views(svc, source, rerun_id)
    assert blobs.get_bytes(f"tasks/{rerun_id}/{PACKS[0]}") == b"x"
    blobs.delete_prefix(f"tasks/{source_id}/{PACKS[0]}")
    copy_image_views(svc, source, bare_id)  # gone meanwhile: the worker makes its own
    copy_image_views(svc, Task(id=source_id, input_key="k", result_keys={}), bare_id)
    assert list(blobs.list_keys(f"tasks/{bare_id}/")) == []
