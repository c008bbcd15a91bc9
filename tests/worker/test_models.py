"""`ModelDirectories`: a fine-tuned model fetched from the blob store into a local directory,
its OpenVINO IRs with it when the fine-tune stored them (each whole or not at all)."""

import uuid
from pathlib import Path

import pytest

from model.errors import AmsegError
from store.blobs import MODEL_IR, MODEL_IR_INT8, MODEL_RESULTS, LocalBlobStore, task_blob_key
from store.settings import Settings
from worker.models import ModelDirectories


@pytest.fixture
def models(tmp_path: Path) -> ModelDirectories:
    settings = Settings(data_dir=tmp_path)
    return ModelDirectories(settings, LocalBlobStore(settings.blob_dir))


def store_model(models: ModelDirectories, blobs) -> str:
    model_id = str(uuid.uuid4())
    for blob in blobs:
        models.blobs.put_bytes(task_blob_key(model_id, blob), f"{blob.value} bytes".encode())
    return model_id


def files_in(directory: Path) -> set[str]:
    return {str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()}


def test_the_shipped_model_needs_no_fetch(models: ModelDirectories) -> None:
    assert models(None) is None and models("default") is None


def test_a_model_with_its_ir_arrives_whole(models: ModelDirectories) -> None:
    model_id = store_model(models, MODEL_RESULTS + MODEL_IR)
    directory = models(model_id)
    assert files_in(directory) == {blob.value for blob in MODEL_RESULTS + MODEL_IR}
    assert (directory / "openvino" / "fp32" / "model.bin").read_bytes() == (
        b"openvino/fp32/model.bin bytes"
    )
    assert models(model_id) == directory  # fetched once


def test_its_int8_ir_arrives_whole_or_not_at_all(models: ModelDirectories) -> None:
    whole = models(store_model(models, MODEL_RESULTS + MODEL_IR + MODEL_IR_INT8))
    assert files_in(whole) == {blob.value for blob in MODEL_RESULTS + MODEL_IR + MODEL_IR_INT8}
    half = models(store_model(models, MODEL_RESULTS + MODEL_IR + MODEL_IR_INT8[:1]))
    assert files_in(half) == {blob.value for blob in MODEL_RESULTS + MODEL_IR}
    assert not (half / "openvino" / "int8").exists()
    without_fp32 = models(store_model(models, MODEL_RESULTS + MODEL_IR_INT8))
    assert files_in(without_fp32) == {blob.value for blob in MODEL_RESULTS}


def test_a_model_without_an_ir_or_with_half_of_one_arrives_without(
    models: ModelDirectories,
) -> None:
    for stored in (MODEL_RESULTS, MODEL_RESULTS + MODEL_IR[:2]):
        directory = models(store_model(models, stored))
        assert files_in(directory) == {blob.value for blob in MODEL_RESULTS}


def test_a_deleted_model_is_an_error_in_words(models: ModelDirectories) -> None:
    model_id = store_model(models, MODEL_RESULTS[:1])
    with pytest.raises(AmsegError, match="is gone"):
        models(model_id)
    assert not (models.cache / model_id).exists()
