"""Task store behaviour on SQLite and Postgres: idempotency, races, terminal states, the sweep."""

import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from store.blobs import TaskBlob, task_blob_key
from store.tasks import (
    CANCELLED_ERROR,
    RegisterParameters,
    Task,
    TaskKind,
    TaskParameters,
    TaskStatus,
    ViewPart,
    ViewsParameters,
    add_result_keys,
    claimant_id,
    count_tasks_using_input,
    create_task,
    delete_task,
    delete_views_tasks,
    fail_abandoned_tasks,
    fail_task,
    find_tasks_to_redispatch,
    finish_task,
    get_task,
    is_claimable,
    keys_read_by_others,
    latest_views_task,
    list_tasks,
    mark_dispatched,
    mark_running,
    queued_task_ids,
    release_all_claims,
    release_claim,
    release_stale_tasks,
    release_task,
    release_worker_claims,
    report_progress,
    request_cancel,
)

STALE_AFTER_S = 60.0
MAX_ATTEMPTS = 3
PARAMETERS = TaskParameters(rows=10, cols=12, threshold=0.4)


def new_task(session: Session, **overrides: Any) -> Task:
    arguments: dict[str, Any] = {
        "parameters": PARAMETERS,
        "input_content_type": "image/png",
        "input_size": 1234,
        "image_width": 640,
        "image_height": 480,
    } | overrides
    task, created = create_task(session, **arguments)
    assert created
    return task


def claim(session: Session, task: Task) -> bool:
    return mark_running(session, task.id, stale_after_s=STALE_AFTER_S, max_attempts=MAX_ATTEMPTS)


def set_columns(session: Session, task: Task, **values: Any) -> None:
    """Move a task's clock back (as if time had passed) or set up a state directly."""
    session.execute(update(Task).where(Task.id == task.id).values(**values))
    session.commit()


def long_ago(seconds: float = 10 * STALE_AFTER_S) -> datetime:
    return datetime.now(UTC) - timedelta(seconds=seconds)


def run_at_once(callables: list[Callable[[], Any]]) -> list[Any]:
    """Run each callable in its own thread, released together by a barrier."""
    barrier = threading.Barrier(len(callables))
    results: list[Any] = [None] * len(callables)
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            barrier.wait()
            results[index] = callables[index]()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(callables))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors, errors
    return results


def test_create_task_is_queued_with_its_input_and_parameters(session: Session) -> None:
    task = new_task(session, input_sha256="ab" * 32)

    stored = get_task(session, str(task.id))
    assert stored is not None
    assert stored.id.version == 4
    assert stored.status == TaskStatus.QUEUED
    assert (stored.progress, stored.attempts, stored.cancel_requested) == (0.0, 0, False)
    assert stored.task_parameters == PARAMETERS
    assert stored.input_key == task_blob_key(task.id, TaskBlob.INPUT)
    assert (stored.image_width, stored.image_height, stored.input_size) == (640, 480, 1234)
    assert stored.created_at.tzinfo is not None
    assert stored.created_at.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - stored.created_at) < timedelta(minutes=1)
    assert stored.started_at is None and stored.finished_at is None


def test_create_task_with_same_idempotency_key_returns_same_task(session: Session) -> None:
    first = new_task(session, idempotency_key="upload-42")

    again, created = create_task(
        session,
        parameters=TaskParameters(rows=1, cols=1),
        input_content_type="image/tiff",
        input_size=1,
        image_width=1,
        image_height=1,
        idempotency_key="upload-42",
    )
    other = new_task(session, idempotency_key="upload-43")

    assert not created
    assert again.id == first.id
    assert again.task_parameters == PARAMETERS
    assert other.id != first.id


def test_concurrent_creates_with_same_idempotency_key_make_one_task(
    session_factory: sessionmaker[Session],
) -> None:
    def create() -> tuple[uuid.UUID, bool]:
        with session_factory() as session:
            task, created = create_task(
                session,
                parameters=PARAMETERS,
                input_content_type="image/png",
                input_size=1,
                image_width=1,
                image_height=1,
                idempotency_key="double-click",
            )
            return task.id, created

    results = run_at_once([create] * 4)

    assert len({task_id for task_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1


def test_racing_workers_exactly_one_marks_the_task_running(
    session: Session, session_factory: sessionmaker[Session]
) -> None:
    task = new_task(session)

    def try_to_claim() -> bool:
        with session_factory() as own_session:
            return mark_running(
                own_session, task.id, stale_after_s=STALE_AFTER_S, max_attempts=MAX_ATTEMPTS
            )

    wins = run_at_once([try_to_claim] * 6)

    assert wins.count(True) == 1
    stored = get_task(session, task.id)
    assert stored is not None
    assert (stored.status, stored.attempts) == (TaskStatus.RUNNING, 1)
    assert stored.started_at is not None and stored.heartbeat_at is not None


def test_mark_running_takes_over_only_a_stale_task_within_its_attempts(session: Session) -> None:
    task = new_task(session)
    assert claim(session, task)
    assert not claim(session, task), "a live RUNNING task belongs to its worker"

    set_columns(session, task, heartbeat_at=long_ago())
    assert claim(session, task), "a stale RUNNING task is taken over"
    assert get_task(session, task.id).attempts == 2

    set_columns(session, task, heartbeat_at=long_ago(), attempts=MAX_ATTEMPTS)
    assert not claim(session, task), "no run beyond max_attempts"


def test_mark_running_refuses_finished_failed_and_cancelled_tasks(session: Session) -> None:
    finished, failed, cancelled = new_task(session), new_task(session), new_task(session)
    claim(session, finished)
    finish_task(session, finished.id, result_keys={})
    fail_task(session, failed.id, error="bad image")
    set_columns(session, cancelled, cancel_requested=True)

    assert not any(claim(session, task) for task in (finished, failed, cancelled))


def test_report_progress_records_stage_and_heartbeat_while_running(session: Session) -> None:
    task = new_task(session)
    assert not report_progress(session, task.id, progress=0.1), "not running yet"
    claim(session, task)
    set_columns(session, task, heartbeat_at=long_ago())

    assert report_progress(session, task.id, progress=0.25, stage="segment")

    stored = get_task(session, task.id)
    assert (stored.progress, stored.stage) == (0.25, "segment")
    assert datetime.now(UTC) - stored.heartbeat_at < timedelta(minutes=1)
    with pytest.raises(ValueError, match=r"within 0\.\.1"):
        report_progress(session, task.id, progress=1.5)


def test_finishing_twice_changes_nothing(session: Session) -> None:
    task = new_task(session)
    claim(session, task)
    results = {"mask": task_blob_key(task.id, TaskBlob.MASK)}

    assert finish_task(session, task.id, result_keys=results)
    first = get_task(session, task.id)
    first_finished_at = first.finished_at
    assert finish_task(session, task.id, result_keys={"mask": "somewhere/else"})

    again = get_task(session, task.id)
    assert again.status == TaskStatus.FINISHED
    assert again.progress == 1.0
    assert again.result_keys == results
    assert again.finished_at == first_finished_at


def test_finish_refuses_a_task_that_is_not_running(session: Session) -> None:
    queued = new_task(session)
    assert not finish_task(session, queued.id, result_keys={})
    assert get_task(session, queued.id).status == TaskStatus.QUEUED


def test_fail_task_records_the_error_but_never_unfinishes(session: Session) -> None:
    running, finished = new_task(session), new_task(session)
    claim(session, running)
    claim(session, finished)
    finish_task(session, finished.id, result_keys={})

    assert fail_task(session, running.id, error="image has no marks")
    assert fail_task(session, running.id, error="a later complaint")
    assert not fail_task(session, finished.id, error="too late")

    failed = get_task(session, running.id)
    assert (failed.status, failed.error) == (TaskStatus.FAILED, "image has no marks")
    assert failed.finished_at is not None
    assert get_task(session, finished.id).status == TaskStatus.FINISHED


def test_cancel_fails_a_queued_task_and_stops_a_running_one(session: Session) -> None:
    queued, running = new_task(session), new_task(session)
    claim(session, running)

    assert request_cancel(session, queued.id)
    assert request_cancel(session, running.id)

    assert get_task(session, queued.id).status == TaskStatus.FAILED
    assert get_task(session, running.id).cancel_requested
    assert not report_progress(session, running.id, progress=0.5), "the worker must stop"
    assert not request_cancel(session, queued.id), "already over"


def test_sweep_finds_only_stale_tasks_within_their_attempts(session: Session) -> None:
    live = new_task(session)
    claim(session, live)
    stale = new_task(session)
    claim(session, stale)
    set_columns(session, stale, heartbeat_at=long_ago())
    exhausted = new_task(session)
    claim(session, exhausted)
    set_columns(session, exhausted, heartbeat_at=long_ago(), attempts=MAX_ATTEMPTS)
    lost_in_queue = new_task(session)
    set_columns(session, lost_in_queue, created_at=long_ago())
    just_queued = new_task(session)
    finished_long_ago = new_task(session)
    claim(session, finished_long_ago)
    finish_task(session, finished_long_ago.id, result_keys={})
    set_columns(session, finished_long_ago, created_at=long_ago(), heartbeat_at=long_ago())

    limits = {"stale_after_s": STALE_AFTER_S, "max_attempts": MAX_ATTEMPTS}
    to_redispatch = find_tasks_to_redispatch(session, **limits)
    abandoned = fail_abandoned_tasks(session, **limits)
    handed_back = release_stale_tasks(session, **limits)

    assert to_redispatch == [lost_in_queue.id]
    assert abandoned == [exhausted.id]
    assert handed_back == [stale.id]
    given_up = get_task(session, exhausted.id)
    assert given_up.status == TaskStatus.FAILED
    assert "giving up" in given_up.error
    assert get_task(session, live.id).status == TaskStatus.RUNNING
    released = get_task(session, stale.id)
    assert (released.status, released.attempts, released.claimed_by) == (TaskStatus.QUEUED, 1, None)
    assert released.dispatched_at is not None  # its message is sent again: not a candidate
    assert find_tasks_to_redispatch(session, **limits) == [lost_in_queue.id]
    assert get_task(session, just_queued.id).status == TaskStatus.QUEUED


def test_a_new_start_hands_back_every_running_task_without_counting_it(session: Session) -> None:
    running = new_task(session)
    claim(session, running)
    finished = new_task(session)
    claim(session, finished)
    finish_task(session, finished.id, result_keys={})

    assert release_all_claims(session, max_attempts=MAX_ATTEMPTS) == [running.id]
    task = get_task(session, running.id)
    assert (task.status, task.attempts) == (TaskStatus.QUEUED, 0)
    assert get_task(session, finished.id).status == TaskStatus.FINISHED
    assert queued_task_ids(session) == [running.id]


def test_only_a_task_that_could_be_claimed_now_is_claimable(session: Session) -> None:
    limits = {"stale_after_s": STALE_AFTER_S, "max_attempts": MAX_ATTEMPTS}
    queued, running, stale, cancelled = (new_task(session) for _ in range(4))
    for task in (running, stale):
        claim(session, task)
    set_columns(session, stale, heartbeat_at=long_ago())
    request_cancel(session, cancelled.id)

    claimable = {
        task.id
        for task in (queued, running, stale, cancelled)
        if is_claimable(session, task.id, **limits)
    }
    assert claimable == {queued.id, stale.id}
    assert not is_claimable(session, "not-a-task", **limits)


def test_sweep_fails_a_cancelled_task_whose_worker_died(session: Session) -> None:
    task = new_task(session)
    claim(session, task)
    request_cancel(session, task.id)
    set_columns(session, task, heartbeat_at=long_ago())

    assert (
        find_tasks_to_redispatch(session, stale_after_s=STALE_AFTER_S, max_attempts=MAX_ATTEMPTS)
        == []
    )
    assert fail_abandoned_tasks(
        session, stale_after_s=STALE_AFTER_S, max_attempts=MAX_ATTEMPTS
    ) == [task.id]
    assert get_task(session, task.id).error == CANCELLED_ERROR


def test_cursor_pages_return_every_task_once_newest_first(session: Session) -> None:
    tasks = [new_task(session) for _ in range(8)]
    same_moment = datetime.now(UTC).replace(microsecond=678901) - timedelta(hours=1)
    for task in tasks[:5]:  # most share one timestamp, so only the id breaks ties
        set_columns(session, task, created_at=same_moment)
    set_columns(session, tasks[5], created_at=same_moment - timedelta(seconds=1))
    set_columns(session, tasks[6], created_at=same_moment + timedelta(seconds=1))

    seen: list[Task] = []
    cursor = None
    for _ in range(10):
        page = list_tasks(session, limit=3, cursor=cursor)
        seen.extend(page.tasks)
        cursor = page.next_cursor
        if cursor is None:
            break

    assert len(seen) == len(tasks)
    assert {task.id for task in seen} == {task.id for task in tasks}
    order = [(task.created_at, str(task.id).replace("-", "")) for task in seen]
    assert order == sorted(order, reverse=True)
    assert seen[0].id == tasks[7].id and seen[-1].id == tasks[5].id


def test_list_tasks_filters_by_status_and_rejects_bad_cursors(session: Session) -> None:
    queued, running = new_task(session), new_task(session)
    claim(session, running)

    assert [task.id for task in list_tasks(session, status=TaskStatus.QUEUED).tasks] == [queued.id]
    with pytest.raises(ValueError, match="cursor"):
        list_tasks(session, cursor="not-a-cursor")
    with pytest.raises(ValueError, match="limit"):
        list_tasks(session, limit=0)


@pytest.mark.parametrize("task_id", ["", "nope", "1234", "../etc/passwd", str(uuid.uuid4())])
def test_unknown_or_malformed_ids_are_simply_not_found(session: Session, task_id: str) -> None:
    assert get_task(session, task_id) is None
    assert not mark_running(session, task_id, stale_after_s=1, max_attempts=1)
    assert not report_progress(session, task_id, progress=0.5)
    assert not finish_task(session, task_id, result_keys={})
    assert not fail_task(session, task_id, error="x")
    assert not request_cancel(session, task_id)
    assert not delete_task(session, task_id)


def test_delete_task_removes_the_row(session: Session) -> None:
    task = new_task(session)

    assert delete_task(session, task.id)

    assert get_task(session, task.id) is None
    assert not delete_task(session, task.id)


def test_task_parameters_refuse_nonsense() -> None:
    with pytest.raises(ValueError):
        TaskParameters(rows=0, cols=5)
    with pytest.raises(ValueError):
        TaskParameters(rows=5, cols=5, threshold=2.0)
    with pytest.raises(ValueError):
        TaskParameters(rows=5, cols=5, colour="blue")
    with pytest.raises(ValueError):
        TaskParameters(rows=5)
    with pytest.raises(ValueError, match="orient an imzML"):
        TaskParameters(flip_x=True)  # no imzML to orient
    with pytest.raises(ValueError, match="give rows and cols"):
        RegisterParameters()
    assert TaskParameters().rows is None  # segmentation only
    # 90 000 nodes number in 32 bits; whether the image holds them is the API's check.
    assert TaskParameters(rows=300, cols=300).registers
    assert TaskParameters(imzml=True, transpose=True).registers  # the grid from the imzML
    assert RegisterParameters(imzml=True).rows is None


def test_a_resent_task_is_not_resent_again_within_the_stale_period(session: Session) -> None:
    queued = new_task(session)
    set_columns(session, queued, created_at=long_ago())
    sweep = {"stale_after_s": STALE_AFTER_S, "max_attempts": MAX_ATTEMPTS}
    assert find_tasks_to_redispatch(session, **sweep) == [queued.id]
    assert mark_dispatched(session, queued.id)
    assert find_tasks_to_redispatch(session, **sweep) == []
    set_columns(session, queued, dispatched_at=long_ago())
    assert find_tasks_to_redispatch(session, **sweep) == [queued.id]
    assert not mark_dispatched(session, uuid.uuid4())


def test_release_hands_a_running_task_back_with_its_attempt_counted(session: Session) -> None:
    task = new_task(session)
    assert claim(session, task)
    assert release_task(session, task.id)
    released = get_task(session, task.id)
    assert released.status == TaskStatus.QUEUED
    assert released.attempts == 1
    assert released.heartbeat_at is None
    assert not release_task(session, task.id)  # only RUNNING tasks are released
    assert claim(session, task)
    assert get_task(session, task.id).attempts == 2


def test_a_queued_task_without_attempts_left_is_failed_by_the_sweep(session: Session) -> None:
    task = new_task(session)
    set_columns(session, task, attempts=MAX_ATTEMPTS)  # handed back after its last attempt
    assert fail_abandoned_tasks(
        session, stale_after_s=STALE_AFTER_S, max_attempts=MAX_ATTEMPTS
    ) == [task.id]
    failed = get_task(session, task.id)
    assert failed.status == TaskStatus.FAILED
    assert f"{MAX_ATTEMPTS} attempts" in failed.error


def claim_as(session: Session, task: Task, claimant: str) -> None:
    assert mark_running(
        session,
        task.id,
        stale_after_s=STALE_AFTER_S,
        max_attempts=MAX_ATTEMPTS,
        claimant=claimant,
    )


def test_a_dead_processes_claim_is_released_at_once_with_its_attempt_counted(
    session: Session,
) -> None:
    task = new_task(session)
    claim_as(session, task, claimant_id(100, 101))
    assert get_task(session, task.id).claimed_by == claimant_id(100, 101)

    other_process = claimant_id(100, 102)
    assert (
        release_claim(session, task.id, claimant=other_process, max_attempts=MAX_ATTEMPTS) is None
    )
    assert get_task(session, task.id).status == TaskStatus.RUNNING

    status = release_claim(
        session, task.id, claimant=claimant_id(100, 101), max_attempts=MAX_ATTEMPTS
    )
    released = get_task(session, task.id)
    assert status == released.status == TaskStatus.QUEUED
    assert released.attempts == 1
    assert released.claimed_by is None and released.heartbeat_at is None
    assert claim(session, task)  # claimable now, not only once the heartbeat went stale
    assert get_task(session, task.id).attempts == 2


def test_a_dead_processes_task_that_cannot_run_again_is_failed(session: Session) -> None:
    last_attempt, cancelled = new_task(session), new_task(session)
    claimant = claimant_id(100, 101)
    for task in (last_attempt, cancelled):
        claim_as(session, task, claimant)
    set_columns(session, last_attempt, attempts=MAX_ATTEMPTS)
    assert request_cancel(session, cancelled.id)

    for task in (last_attempt, cancelled):
        status = release_claim(session, task.id, claimant=claimant, max_attempts=MAX_ATTEMPTS)
        assert status == TaskStatus.FAILED
    assert f"{MAX_ATTEMPTS} attempts" in get_task(session, last_attempt.id).error
    assert get_task(session, cancelled.id).error == CANCELLED_ERROR


@pytest.mark.parametrize("count_attempt", [False, True])
def test_an_ended_workers_tasks_are_handed_back_and_no_one_elses(
    session: Session, count_attempt: bool
) -> None:
    ended, other_worker, other_host = new_task(session), new_task(session), new_task(session)
    claim_as(session, ended, claimant_id(100, 101))
    claim_as(session, other_worker, claimant_id(1000, 1001))  # "…:100" is a prefix of "…:1000"
    claim_as(session, other_host, "elsewhere:100:101")

    handed_back = release_worker_claims(
        session, worker_pid=100, max_attempts=MAX_ATTEMPTS, count_attempt=count_attempt
    )

    assert handed_back == [ended.id]
    queued = get_task(session, ended.id)
    assert queued.status == TaskStatus.QUEUED
    assert queued.attempts == (1 if count_attempt else 0)  # a stop on purpose costs no attempt
    for task in (other_worker, other_host):
        assert get_task(session, task.id).status == TaskStatus.RUNNING


def test_views_tasks_work_for_their_source_and_go_with_it(session: Session) -> None:
    source = new_task(session)
    assert claim(session, source)
    assert finish_task(session, source.id, result_keys={"mask.png": "tasks/s/mask.png"})
    assert not add_result_keys(session, uuid.uuid4(), {"views/image.tiles": "x"})
    viewer = new_task(
        session,
        parameters=ViewsParameters(),
        input_key=source.input_key,
        source_task=source.id,
    )
    exports = new_task(
        session,
        parameters=ViewsParameters(part=ViewPart.GEOJSON),
        input_key=source.input_key,
        source_task=source.id,
    )
    assert viewer.kind == TaskKind.VIEWS and viewer.views_parameters.part == ViewPart.VIEWER
    assert latest_views_task(session, source.id, ViewPart.VIEWER).id == viewer.id
    assert latest_views_task(session, source.id, ViewPart.GEOJSON).id == exports.id
    assert latest_views_task(session, source.id, ViewPart.LABELS_TIFF) is None
    # It reads its source's image, but deleting the source does not wait for it.
    assert count_tasks_using_input(session, source.input_key, besides=source.id) == 0
    assert keys_read_by_others(session, source.input_key, besides=source.id) == set()
    reader = new_task(
        session,
        parameters=RegisterParameters(rows=2, cols=2),
        input_key=source.input_key,
        result_keys={"mask.png": "tasks/s/mask.png", "labels.png": "tasks/r/labels.png"},
    )
    assert keys_read_by_others(session, source.input_key, besides=source.id) == {
        source.input_key,
        "tasks/s/mask.png",
        "tasks/r/labels.png",
    }
    delete_task(session, reader.id)
    assert [task.id for task in list_tasks(session).tasks] == [source.id]

    assert add_result_keys(session, source.id, {"views/image.tiles": "tasks/s/views/image.tiles"})
    assert add_result_keys(session, source.id, {"views/mask.tiles": "tasks/s/views/mask.tiles"})
    assert get_task(session, source.id).result_keys == {
        "mask.png": "tasks/s/mask.png",
        "views/image.tiles": "tasks/s/views/image.tiles",
        "views/mask.tiles": "tasks/s/views/mask.tiles",
    }
    assert delete_views_tasks(session, source.id) == 2
    assert latest_views_task(session, source.id, ViewPart.VIEWER) is None
    running = new_task(session)
    assert not add_result_keys(session, running.id, {"views/image.tiles": "x"})  # not FINISHED
