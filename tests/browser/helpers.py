"""What the browser tests share: waiting, finding, screenshots, pointer drags in image pixels,
and what the page logged."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except Exception:  # an element not there yet
            value = None
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.25)


def shoot(driver, folder: Path, name: str) -> None:
    path = folder / f"{name}.png"
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")


def css(driver, selector: str):
    return driver.find_element("css selector", selector)


def canvas_offset(driver, x: float, y: float) -> tuple[int, int]:
    """Where image pixel (x, y) is on the viewer's canvas, from the canvas' centre."""
    return tuple(
        round(v)
        for v in driver.execute_script(
            "const v = arguments[0].viewer; const p = v.imageToScreen(arguments[1], arguments[2]);"
            "return [p.x - v.viewWidth / 2, p.y - v.viewHeight / 2];",
            css(driver, "#view-canvas"),
            x,
            y,
        )
    )


def cyan_pixels(driver) -> int:
    """How many pixels of the viewer's canvas show the mask's colour (cyan) now."""
    return driver.execute_script(
        "const c = arguments[0]; const d = c.getContext('2d').getImageData(0, 0, c.width,"
        " c.height).data; let n = 0; for (let i = 0; i < d.length; i += 4) {"
        " if (d[i + 2] > d[i] + 60 && d[i + 1] > d[i] + 40) n++; } return n;",
        css(driver, "#view-canvas"),
    )


def drag(driver, points: list[tuple[float, float]]) -> None:
    """Press the left button at the first image point, move through the others, release."""
    from selenium.webdriver.common.action_chains import ActionChains

    canvas = css(driver, "#view-canvas")
    actions = ActionChains(driver).move_to_element_with_offset(
        canvas, *canvas_offset(driver, *points[0])
    )
    actions.click_and_hold()
    for point in points[1:]:
        actions.move_to_element_with_offset(canvas, *canvas_offset(driver, *point))
    actions.release().perform()


def severe_errors(driver, allowed: tuple[str, ...] = ()) -> list[dict]:
    """The console's errors, but those whose message holds one of `allowed`."""
    return [
        entry
        for entry in driver.get_log("browser")
        if entry["level"] == "SEVERE" and not any(text in entry["message"] for text in allowed)
    ]
