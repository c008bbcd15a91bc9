"""Nothing is lost, results explain themselves, a grid is fixed in seconds, failures stay small:
the page in a real browser against `amseg up`. Corrections come back after a reload; leaving
with unsaved corrections or a running upload asks first; a FAILED task shows its error once and
asks for no tiles; the grid is numbered again from the page and the viewer follows the new task
in place; downloads carry the slide's name. Screenshots land beside test_web.py's."""

from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from store.blobs import LocalBlobStore
from store.database import create_db_engine, create_session_factory
from store.tasks import get_task
from tests.browser.conftest import RunningService
from tests.browser.helpers import canvas_offset, css, drag, severe_errors, shoot, wait_for
from tests.conftest import REAL_DATA

pytestmark = pytest.mark.slow

CROP = REAL_DATA / "source_small.png"
ROWS, COLS = 7, 4  # one row more than the crop shows: the registration says so
BOX = (300, 80, 470, 230)
STROKE = [(x, 215) for x in range(315, 346, 5)]
NO_DRAFT = "/corrections - Failed to load resource: the server responded with a status of 404"


def upload(service: RunningService, data: bytes, name: str, **params) -> str:
    files = {"file": (name, data, "image/png")}
    response = httpx.post(f"{service.base_url}/tasks", files=files, params=params, timeout=30)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def wait_over(service: RunningService, task_id: str, timeout: float = 180) -> dict:
    def over():
        task = httpx.get(f"{service.base_url}/tasks/{task_id}").json()
        return task if task["status"] in ("FINISHED", "FAILED") else None

    return wait_for(over, timeout, f"task {task_id} to be over")


@pytest.fixture(scope="module")
def finished(service: RunningService) -> str:
    """The real crop, segmented and numbered on a 7 x 4 grid."""
    task_id = upload(service, CROP.read_bytes(), CROP.name, rows=ROWS, cols=COLS)
    assert wait_over(service, task_id)["status"] == "FINISHED"
    return task_id


def open_viewer(driver, service: RunningService, task_id: str) -> None:
    driver.get(f"{service.base_url}/#/tasks/{task_id}")
    wait_for(lambda: css(driver, "#view-canvas[data-marks]"), 60, "the marks")


def editor_summary(driver) -> dict:
    return driver.execute_script(
        "return arguments[0].viewer.editor.summary()", css(driver, "#view-canvas")
    )


def draw_box_and_stroke(driver) -> None:
    canvas = css(driver, "#view-canvas")
    canvas.send_keys("b")
    x0, y0, x1, y1 = BOX
    drag(driver, [(x0, y0), ((x0 + x1) / 2, (y0 + y1) / 2), (x1, y1)])
    wait_for(lambda: editor_summary(driver)["boxes"] == 1, 10, "the box")
    canvas.send_keys("d")
    drag(driver, STROKE)


def draft_state(driver) -> str | None:
    return css(driver, "#draft-state [data-draft]").get_attribute("data-draft")


def leave_prompted(driver) -> bool:
    """What the page's beforeunload handler does now: True when it asks the browser to ask.
    (ChromeDriver accepts the browser's own dialog by itself, so the handler is called.)"""
    return driver.execute_script(
        "const e = new Event('beforeunload', {cancelable: true}); window.dispatchEvent(e);"
        "return e.defaultPrevented;"
    )


def test_corrections_come_back_after_a_reload(
    browser, service: RunningService, finished: str, screenshots: Path
) -> None:
    open_viewer(browser, service, finished)
    draw_box_and_stroke(browser)
    drawn = editor_summary(browser)
    wait_for(lambda: draft_state(browser) == "saved", 10, "the draft saved")
    assert css(browser, "#draft-chip").text == "✓ saved"
    # The server holds the labels as a fine-tune takes them, with the boxes beside them.
    response = httpx.get(f"{service.base_url}/tasks/{finished}/corrections")
    assert response.status_code == 200
    saved = Image.open(io.BytesIO(response.content))
    labels = np.asarray(saved)
    x0, _, _, y1 = BOX
    assert labels.shape == (512, 512) and set(np.unique(labels)) == {0, 128, 255}
    assert (labels[:, : x0 - 1] == 128).all() and (labels[y1 + 1 :, :] == 128).all()
    assert (labels[215, 315:346] == 255).all()
    (box,) = json.loads(saved.text["amseg"])["boxes"]  # the page's own note of its boxes
    assert np.abs(np.subtract(box, BOX)).max() <= 2  # a pointer lands within a pixel or two

    browser.refresh()
    wait_for(lambda: css(browser, "#view-canvas[data-marks]"), 60, "the marks again")
    wait_for(lambda: editor_summary(browser) == drawn, 10, "the corrections restored")
    assert draft_state(browser) == "saved"
    shoot(browser, screenshots, "20-corrections-restored")
    # Back to the list and back again: still there; undo has nothing to take back.
    css(browser, ".panel a[href='#/']").click()
    wait_for(lambda: css(browser, "#task-list tr"), 10, "the task list")
    browser.back()
    wait_for(lambda: css(browser, "#view-canvas[data-marks]"), 60, "the viewer again")
    wait_for(lambda: editor_summary(browser) == drawn, 10, "the corrections restored again")
    assert not severe_errors(browser, allowed=(NO_DRAFT,))


def draft_from_elsewhere(box: tuple[int, int, int, int]) -> bytes:
    """What another tab saves: one box labelled background, in the page's own format."""
    labels = np.full((512, 512), 128, np.uint8)
    x0, y0, x1, y1 = box
    labels[y0:y1, x0:x1] = 0
    info = PngImagePlugin.PngInfo()
    info.add_text("amseg", json.dumps({"boxes": [list(box)], "saved_at": "2026-12-07T10:00:00Z"}))
    buffer = io.BytesIO()
    Image.fromarray(labels).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def test_two_tabs_do_not_overwrite_each_other_unseen(
    browser, service: RunningService, screenshots: Path
) -> None:
    task_id = upload(service, CROP.read_bytes(), "two-tabs.png", rows=ROWS, cols=COLS)
    assert wait_over(service, task_id)["status"] == "FINISHED"
    open_viewer(browser, service, task_id)
    # The 7 x 4 grid is larger than the crop shows: the nodes off the image are counted apart.
    marks = httpx.get(f"{service.base_url}/tasks/{task_id}/marks").json()
    off_image = [node for node in marks["missing"] if node["inside"] is False]
    assert off_image and all(node["inside"] for node in marks["missing"] if node not in off_image)
    assert f"({len(off_image)} outside the image)" in css(browser, "#qc").text
    draw_box_and_stroke(browser)
    wait_for(lambda: draft_state(browser) == "saved", 10, "the draft saved")
    path = f"{service.base_url}/tasks/{task_id}/corrections"

    def saved_elsewhere(box) -> None:  # another tab (or window, or person) saves its own
        headers = {"Content-Type": "image/png"}
        assert (
            httpx.put(path, content=draft_from_elsewhere(box), headers=headers).status_code == 204
        )

    def draw_on() -> None:
        css(browser, "#view-canvas").send_keys("d")
        drag(browser, [(x, 160) for x in range(315, 346, 5)])

    saved_elsewhere((40, 40, 120, 120))
    draw_on()
    wait_for(lambda: draft_state(browser) == "conflict", 10, "the conflict")
    assert css(browser, "#draft-chip").text == "⚠ changed elsewhere"
    assert "Another tab or window saved other corrections" in css(browser, "#draft-state").text
    assert leave_prompted(browser)  # this page's corrections are not on the server
    assert json.loads(Image.open(io.BytesIO(httpx.get(path).content)).text["amseg"])["boxes"] == [
        [40, 40, 120, 120]
    ]  # theirs were not overwritten
    assert "choose in the panel whose to keep" in css(browser, "#status").text
    browser.execute_script("arguments[0].scrollIntoView()", css(browser, "#draft-state"))
    shoot(browser, screenshots, "27-draft-changed-elsewhere")
    mine = editor_summary(browser)
    css(browser, "[data-draft-choice='mine']").click()
    wait_for(lambda: draft_state(browser) == "saved", 10, "this page's draft saved")
    (box,) = json.loads(Image.open(io.BytesIO(httpx.get(path).content)).text["amseg"])["boxes"]
    assert np.abs(np.subtract(box, BOX)).max() <= 2 and editor_summary(browser) == mine
    assert not leave_prompted(browser)

    saved_elsewhere((60, 300, 200, 420))
    draw_on()
    wait_for(lambda: draft_state(browser) == "conflict", 10, "the second conflict")
    css(browser, "[data-draft-choice='theirs']").click()
    theirs = {"boxes": 1, "area": 140 * 120, "marked": 0}
    wait_for(lambda: editor_summary(browser) == theirs, 10, "their corrections shown")
    assert draft_state(browser) == "saved" and not leave_prompted(browser)
    # Drawing on now saves over theirs: this page has seen them.
    css(browser, "#view-canvas").send_keys("b")
    x0, y0, x1, y1 = BOX
    drag(browser, [(x0, y0), ((x0 + x1) / 2, (y0 + y1) / 2), (x1, y1)])
    wait_for(lambda: editor_summary(browser)["boxes"] == 2, 10, "a second box")
    wait_for(lambda: draft_state(browser) == "saved", 10, "saved after theirs")
    boxes = json.loads(Image.open(io.BytesIO(httpx.get(path).content)).text["amseg"])["boxes"]
    assert len(boxes) == 2 and [60, 300, 200, 420] in boxes
    refused = "corrections - Failed to load resource: the server responded with a status of 412"
    assert not severe_errors(browser, allowed=(NO_DRAFT, refused))


def test_undo_redo_and_clear(browser, service: RunningService, finished: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    open_viewer(browser, service, finished)
    wait_for(lambda: editor_summary(browser)["boxes"] == 1, 10, "the draft restored")
    canvas = css(browser, "#view-canvas")
    canvas.send_keys("d")
    before = editor_summary(browser)["marked"]
    drag(browser, [(x, 120) for x in range(315, 346, 5)])
    painted = wait_for(lambda: (n := editor_summary(browser)["marked"]) > before and n, 5, "paint")
    canvas.send_keys("z")
    assert editor_summary(browser)["marked"] == before
    chord = ActionChains(browser).key_down(Keys.CONTROL).key_down(Keys.SHIFT).send_keys("z")
    chord.key_up(Keys.SHIFT).key_up(Keys.CONTROL).perform()
    assert editor_summary(browser)["marked"] == painted
    canvas.send_keys("z")
    ActionChains(browser).key_down(Keys.CONTROL).send_keys("y").key_up(Keys.CONTROL).perform()
    assert editor_summary(browser)["marked"] == painted
    css(browser, "#undo").click()
    css(browser, "#redo").click()
    assert editor_summary(browser)["marked"] == painted
    css(browser, "#clear-corrections").click()  # one step, undone like any other
    assert editor_summary(browser)["boxes"] == 0
    canvas.send_keys("z")
    restored = editor_summary(browser)
    assert (restored["boxes"], restored["marked"]) == (1, painted)
    canvas.send_keys("z")  # the stroke, so the draft is as the first test left it
    wait_for(lambda: draft_state(browser) == "saved", 10, "the draft saved")


def test_leaving_with_unsaved_work_asks_first(
    browser, service: RunningService, finished: str, screenshots: Path
) -> None:
    open_viewer(browser, service, finished)
    wait_for(lambda: editor_summary(browser)["boxes"] == 1, 10, "the draft restored")
    assert not leave_prompted(browser)  # saved: nothing to lose
    # The service stops taking the draft (its PUTs fail), then the person draws and leaves.
    browser.execute_script(
        "window.realFetch = window.fetch; window.fetch = (url, options) =>"
        " options && options.method === 'PUT' ? Promise.reject(new TypeError('offline'))"
        " : window.realFetch(url, options);"
    )
    css(browser, "#view-canvas").send_keys("d")
    drag(browser, [(x, 160) for x in range(315, 346, 5)])
    assert leave_prompted(browser)
    wait_for(lambda: draft_state(browser) == "error", 10, "the failed save")
    assert css(browser, "#draft-chip").text == "⚠ not saved"
    shoot(browser, screenshots, "21-not-saved")
    css(browser, ".panel a[href='#/']").click()
    alert = wait_for(lambda: browser.switch_to.alert, 10, "the leave prompt")
    assert "not saved on the server" in alert.text and "Leave anyway?" in alert.text
    alert.dismiss()  # stay
    assert browser.execute_script("return location.hash") == f"#/tasks/{finished}"
    assert css(browser, "#view-canvas[data-marks]")
    # The service is back: the next try saves, and leaving asks nothing.
    browser.execute_script("window.fetch = window.realFetch;")
    wait_for(lambda: draft_state(browser) == "saved", 15, "the draft saved on a later try")
    assert not leave_prompted(browser)
    css(browser, ".panel a[href='#/']").click()
    wait_for(lambda: css(browser, "#task-list tr"), 10, "the task list")

    # An upload on its way: closing or reloading would stop it, so the page asks.
    browser.execute_script("XMLHttpRequest.prototype.send = function () {};")  # never ends
    css(browser, "#file-input").send_keys(str(CROP))
    css(browser, "#upload-button").click()
    wait_for(lambda: "uploading" in css(browser, "#uploads li").text, 5, "the upload")
    assert leave_prompted(browser)
    shoot(browser, screenshots, "22-upload-in-progress")
    browser.get(f"{service.base_url}/")  # a fresh page: the hung upload goes with the old one
    wait_for(lambda: css(browser, "#task-list tr"), 10, "the task list")
    assert not leave_prompted(browser)


def test_grid_fields_say_what_to_type(browser, service: RunningService) -> None:
    browser.get(f"{service.base_url}/")
    rows, cols = css(browser, "#rows"), css(browser, "#cols")
    rows.send_keys("3O")  # a letter O for a zero
    error = css(browser, "#grid-error")
    assert "“3O” is not a whole number" in error.text and "in digits" in error.text
    assert rows.get_attribute("aria-invalid") == "true"
    rows.clear()
    rows.send_keys("30")
    css(browser, "#file-input").send_keys(str(CROP))
    css(browser, "#upload-button").click()  # only rows: refused before anything is sent
    assert "Columns: type the grid's number of columns too" in error.text
    assert cols.get_attribute("aria-invalid") == "true"
    assert css(browser, "#uploads").text == ""
    cols.send_keys("3000")  # 90 000 marks: more than the 543² crop can hold, the API says
    css(browser, "#upload-button").click()
    wait_for(lambda: "image can hold" in css(browser, "#uploads").text, 30, "the API's refusal")
    assert "check rows and columns" in css(browser, "#uploads").text
    # The refusal is the one error in the console: read here, not by the next test's check.
    refusals = severe_errors(browser)
    assert refusals and all("cols=3000" in entry["message"] for entry in refusals), refusals


def test_a_failed_task_shows_its_error_once(
    browser, service: RunningService, screenshots: Path
) -> None:
    data = CROP.read_bytes()
    task_id = upload(service, data[: len(data) // 3], "broken.png")  # the header is fine
    task = wait_over(service, task_id, 120)
    assert task["status"] == "FAILED" and task["error"]
    browser.get(f"{service.base_url}/#/tasks/{task_id}")
    wait_for(lambda: css(browser, "#view-canvas[data-failed]"), 20, "the failed task")
    time.sleep(3)  # long enough for a retrying viewer to have asked many times
    panel = css(browser, ".panel").text
    assert panel.count(task["error"]) == 1
    assert "FAILED" in css(browser, "#task-state").text
    assert "Tiles" not in css(browser, "#status").get_attribute("textContent")  # none asked
    asked = browser.execute_script(
        "return performance.getEntriesByType('resource').map((e) => e.name)"
        ".filter((url) => url.includes(arguments[0]) && /tiles|pyramid|preview/.test(url))",
        task_id,
    )
    assert asked == []
    shoot(browser, screenshots, "23-failed-task")
    log = (service.data_dir.parent / f"{service.data_dir.name}.log").read_text(errors="replace")
    assert not re.findall(r'HTTP/1\.1" 5\d\d', log)


def test_the_grid_is_fixed_from_the_page(
    browser, service: RunningService, finished: str, screenshots: Path
) -> None:
    """The crop shows 6 of the 7 rows asked for, and the registration cannot tell whether the
    empty row is the first or the last. The person knows: the top marks are row 1."""
    old_marks = httpx.get(f"{service.base_url}/tasks/{finished}/marks").json()
    open_viewer(browser, service, finished)
    browser.execute_script("window.sameDocument = true;")
    canvas = css(browser, "#view-canvas")
    assert "Check the grid" in css(browser, "#task-warning").text
    canvas.send_keys("g")
    assert css(browser, "#show-lattice").is_selected()
    assert css(browser, "#grid-rows").get_attribute("value") == str(ROWS)
    assert css(browser, "#grid-cols").get_attribute("value") == str(COLS)
    assert not css(browser, "#anchor-fields").is_displayed()
    # Pick the top-left mark (row 0 now) and say it is row 1, column 0.
    first = min(old_marks["marks"], key=lambda m: (m["row"], m["col"]))
    assert (first["id"], first["row"], first["col"]) == (1, 0, 0)
    canvas.send_keys("k")
    drag(browser, [(first["x"], first["y"])])
    assert css(browser, "#anchor-row").get_attribute("value") == "0"
    assert css(browser, "#anchor-col").get_attribute("value") == "0"
    css(browser, "#anchor-row").clear()
    css(browser, "#anchor-row").send_keys("9")  # off the grid: said in words, not sent
    assert "the grid has 7 rows (0 to 6)" in css(browser, "#grid-fix-error").text
    assert not css(browser, "#register-again").is_enabled()
    css(browser, "#anchor-row").clear()
    css(browser, "#anchor-row").send_keys("1")
    wait_for(lambda: css(browser, "#register-again").is_enabled(), 5, "the button")
    time.sleep(0.3)
    shoot(browser, screenshots, "24-grid-proposed")
    css(browser, "#register-again").click()
    wait_for(lambda: canvas.get_attribute("data-task") != finished, 120, "the new task")
    new_id = canvas.get_attribute("data-task")
    wait_for(lambda: canvas.get_attribute("data-marks"), 30, "the new marks")
    assert browser.execute_script("return window.sameDocument === true")  # no reload
    assert browser.execute_script("return location.hash") == f"#/tasks/{new_id}"
    # The image stayed: nothing of the new task's image was asked for.
    asked = browser.execute_script(
        "return performance.getEntriesByType('resource').map((e) => e.name)"
        ".filter((url) => url.includes(`/tasks/${arguments[0]}/tiles/image`))",
        new_id,
    )
    assert asked == []
    task = httpx.get(f"{service.base_url}/tasks/{new_id}").json()
    assert task["kind"] == "register" and task["source_task"] == finished
    new_marks = httpx.get(f"{service.base_url}/tasks/{new_id}/marks").json()
    old_ids = {(m["x"], m["y"]): m["id"] for m in old_marks["marks"]}
    new_ids = {(m["x"], m["y"]): m["id"] for m in new_marks["marks"]}
    assert new_ids.keys() == old_ids.keys()  # the same marks, from the same mask
    assert all(new_ids[at] == old_ids[at] + COLS for at in old_ids)  # one row down
    assert not any("ambiguous" in warning for warning in task["warnings"])
    # Hovering the picked mark now says so.
    from selenium.webdriver.common.action_chains import ActionChains

    offset = canvas_offset(browser, first["x"], first["y"])
    ActionChains(browser).move_to_element_with_offset(canvas, *offset).perform()
    tip = wait_for(lambda: css(browser, "#hover-tip:not([hidden])"), 5, "the hover tip")
    assert tip.text.startswith("Mark 5 · row 1, column 0")
    # Numbered again without segmenting: the worker logged no segmentation for it.
    log = (service.data_dir.parent / f"{service.data_dir.name}.log").read_text(errors="replace")
    assert f"task {new_id}: segmenting" not in log
    time.sleep(0.5)
    shoot(browser, screenshots, "25-grid-fixed")
    assert not severe_errors(browser, allowed=(NO_DRAFT,))


def test_downloads_carry_the_slides_name(browser, service: RunningService, finished: str) -> None:
    browser.get(f"{service.base_url}/")
    browser.execute_script("localStorage.clear()")  # the name must come from the API
    open_viewer(browser, service, finished)
    assert css(browser, "#task-title").text == CROP.name
    links = {
        link.text: link.get_attribute("download")
        for link in browser.find_elements("css selector", "#downloads a")
    }
    assert links["Mask (PNG, 0/255)"] == "source_small_mask.png"
    assert links["Id image (16-bit PNG)"] == "source_small_labels.png"
    assert links["Mark table (ams.csv)"] == "source_small_ams.csv"
    assert links["QC (JSON)"] == "source_small_qc.json"
    response = httpx.get(f"{service.base_url}/masks/{finished}")
    assert "source_small" in response.headers.get("content-disposition", "")


def test_a_task_without_a_grid_says_how_many_marks(browser, service: RunningService) -> None:
    task_id = upload(service, CROP.read_bytes(), "no_grid.png")
    task = wait_over(service, task_id)
    assert task["status"] == "FINISHED" and task["summary"]["found"] > 0
    browser.get(f"{service.base_url}/#/tasks/{task_id}")
    found = wait_for(lambda: css(browser, "#qc dd[data-found]"), 30, "the marks found")
    assert found.get_attribute("data-found") == str(task["summary"]["found"])
    assert "No grid was given" in css(browser, "#qc-note").text
    assert css(browser, "#grid-section").is_displayed()  # rows and columns can be given here
    assert css(browser, "#grid-rows").get_attribute("value") == ""
    assert not css(browser, "#show-lattice").is_enabled()  # no ids, no lattice to draw


def test_a_task_finished_before_workers_made_tiles_shows_when_a_worker_made_them(
    browser, service: RunningService, screenshots: Path
) -> None:
    task_id = upload(service, CROP.read_bytes(), "earlier.png", rows=ROWS, cols=COLS)
    assert wait_over(service, task_id)["status"] == "FINISHED"
    # What an earlier version of amseg left: no tile packs, no mark table.
    database = f"sqlite:///{service.data_dir / 'amseg.sqlite3'}"  # amseg up's
    with create_session_factory(create_db_engine(database))() as session:
        task = get_task(session, task_id)
        task.result_keys = {k: v for k, v in task.result_keys.items() if "/" not in k}
        session.commit()
    LocalBlobStore(service.data_dir / "blobs").delete_prefix(f"tasks/{task_id}/views/")

    browser.get(f"{service.base_url}/#/tasks/{task_id}")
    canvas = wait_for(lambda: css(browser, "#view-canvas[data-tiles]"), 30, "the viewer")
    wait_for(lambda: canvas.get_attribute("data-tiles") == "ready", 60, "the worker's tiles")
    wait_for(lambda: css(browser, "#view-canvas[data-marks]"), 30, "the marks")
    wait_for(
        lambda: browser.execute_script("return arguments[0].viewer.tilesDrawn > 0", canvas),
        30,
        "the image drawn",
    )
    assert not css(browser, "#tiles-note").is_displayed()
    shoot(browser, screenshots, "26-earlier-task-tiles")
    asked = browser.execute_script(
        "return performance.getEntriesByType('resource').map((e) => e.name)"
        ".filter((url) => url.includes(arguments[0]) && url.endsWith('/pyramid'))",
        task_id,
    )
    assert len(asked) >= 2  # it asked again until the tiles were there
    # Tiles asked for while the worker made them were 409s, and nothing else went wrong.
    for entry in severe_errors(browser, allowed=(NO_DRAFT,)):
        assert "status of 409" in entry["message"] and task_id in entry["message"], entry
