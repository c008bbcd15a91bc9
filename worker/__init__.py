"""Celery worker: runs the segmentation pipeline of `model/` on queued tasks."""
