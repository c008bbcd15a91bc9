"""A draft's ETag is always the hash of the body it comes with: GET reads the stored draft once,
so a PUT from another tab landing while it reads cannot give the page one draft's body with
another's ETag (the page would then see a conflict that is not there, or miss one)."""

import hashlib
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.deps import get_services, require_api_key
from api.problems import install_problem_handlers
from api.routes import corrections
from store.blobs import BlobNotFoundError

TASK_ID = "6c2f0a52-1c44-4b51-9d6e-0c3f8a7f1e21"


class DraftChangingUnderfoot:
    """Blobs whose draft is replaced by another tab each time it has been read."""

    def __init__(self, drafts: list[bytes]) -> None:
        self.drafts = drafts
        self.reads = 0

    def iter_chunks(self, key: str) -> Iterator[bytes]:
        if not self.drafts:
            raise BlobNotFoundError(key)
        body = self.drafts[min(self.reads, len(self.drafts) - 1)]
        self.reads += 1
        return iter([body[: len(body) // 2], body[len(body) // 2 :]])


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch):
    task = SimpleNamespace(id=TASK_ID)
    monkeypatch.setattr(corrections, "load_task", lambda svc, task_id: task)

    def client(blobs: DraftChangingUnderfoot) -> TestClient:
        app = FastAPI()
        install_problem_handlers(app)
        app.include_router(corrections.router)
        app.dependency_overrides[get_services] = lambda: SimpleNamespace(blobs=blobs)
        app.dependency_overrides[require_api_key] = lambda: None
        return TestClient(app)

    return client


@pytest.mark.parametrize("size", [1000, 3 * corrections.SPOOL_BYTES])  # in memory; spilled
def test_the_etag_is_the_hash_of_the_body_sent(serve, size: int) -> None:
    first, second = b"a" * size, b"b" * size
    blobs = DraftChangingUnderfoot([first, second])
    response = serve(blobs).get(f"/tasks/{TASK_ID}/corrections")
    assert response.status_code == 200
    assert response.content == first
    etag = hashlib.sha256(response.content).hexdigest()[: corrections.ETAG_CHARS]
    assert response.headers["ETag"] == f'"{etag}"'
    assert blobs.reads == 1


def test_no_draft_is_a_404_problem(serve) -> None:
    response = serve(DraftChangingUnderfoot([])).get(f"/tasks/{TASK_ID}/corrections")
    assert response.status_code == 404
    assert response.json()["type"].endswith("no-corrections")
