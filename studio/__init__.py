"""The Django project. ``celery_app`` is imported here so that every process
that loads Django can enqueue tasks by name."""

from studio.celery import app as celery_app

__all__ = ["celery_app"]
