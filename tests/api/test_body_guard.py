"""The body guard's reading of Content-Length (uvicorn refuses most bad ones before the app;
the guard holds for the ones a server lets through)."""

import pytest
from starlette.datastructures import Headers

from api.body_guard import declared_length
from api.problems import Problem


def headers(*lengths: str) -> Headers:
    return Headers(raw=[(b"content-length", length.encode()) for length in lengths])


@pytest.mark.parametrize(
    ("lengths", "expected"), [((), None), (("0",), 0), (("1234",), 1234), (("5", "5"), 5)]
)
def test_a_valid_content_length_is_read(lengths: tuple[str, ...], expected: int | None) -> None:
    assert declared_length(headers(*lengths)) == expected


@pytest.mark.parametrize("lengths", [("-5",), ("abc",), ("1e3",), ("",), ("5", "6"), ("٣",)])
def test_a_malformed_content_length_is_a_400_problem(lengths: tuple[str, ...]) -> None:
    with pytest.raises(Problem) as caught:
        declared_length(headers(*lengths))
    assert caught.value.status == 400 and caught.value.kind == "invalid-content-length"
    assert caught.value.headers["Connection"] == "close"
