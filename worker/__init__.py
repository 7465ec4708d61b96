"""Celery tasks and the event sink: the only package that imports both
Django (studio) and the core library (tuning)."""
