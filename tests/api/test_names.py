"""A task's name: the uploaded file's name cleaned for storing and showing, and the download
names made from it."""

import pytest

from api.names import clean_name, content_disposition, download_name
from store.tasks import MAX_NAME_LENGTH

TASK_ID = "0b7d9c2e-5f7a-4c1e-9a43-2f4c8d1e6a10"


@pytest.mark.parametrize(
    ("raw", "cleaned"),
    [
        ("slide7.tif", "slide7.tif"),
        ("C:\\Users\\me\\slides\\slide7.png", "slide7.png"),
        ("../../etc/passwd", "passwd"),
        ('my "best"\tslide?.png', "my _best_ slide_.png"),
        ("  .hidden. ", "hidden"),
        ("Präparat 3.tiff", "Präparat 3.tiff"),
        ("line\r\nbreak.png", "line break.png"),
        ("", None),
        ("..", None),
        (None, None),
    ],
)
def test_names_are_the_files_own_name_without_unsafe_characters(raw, cleaned) -> None:
    assert clean_name(raw) == cleaned


def test_long_names_are_cut_but_keep_their_extension() -> None:
    name = clean_name("a" * 500 + ".tiff")
    assert len(name) == MAX_NAME_LENGTH and name.endswith("a.tiff")


def test_downloads_are_named_after_the_slide_or_else_the_task() -> None:
    assert download_name("slide7.tif", TASK_ID, "mask.png") == "slide7_mask.png"
    assert download_name("slide7.PNG", TASK_ID, "ams.csv") == "slide7_ams.csv"
    assert download_name("run.2024.v2", TASK_ID, "qc.json") == "run.2024.v2_qc.json"
    assert download_name(None, TASK_ID, "labels.png") == f"{TASK_ID}_labels.png"


def test_content_disposition_has_an_ascii_fallback_and_the_utf8_name() -> None:
    assert content_disposition("slide7_mask.png") == 'inline; filename="slide7_mask.png"'
    header = content_disposition("Präparat 3_mask.png")
    assert header.startswith('inline; filename="Praparat 3_mask.png"; ')
    assert header.endswith("filename*=UTF-8''Pr%C3%A4parat%203_mask.png")
    quoted = content_disposition('a"b.png')
    assert quoted == "inline; filename=\"a_b.png\"; filename*=UTF-8''a%22b.png"
