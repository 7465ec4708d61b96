"""The Celery application. The web side only sends tasks by name; the
task code lives in ``worker/`` and is loaded by the worker process alone."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "studio.settings")

app = Celery("studio")
app.config_from_object("django.conf:settings", namespace="CELERY")
