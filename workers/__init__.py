"""Celery workers and the Django-free generation stack (engines, strategies, grading)."""
