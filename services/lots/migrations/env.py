"""Alembic's entry point for the lots service's revisions.

Run them with `lotgate migrate --service lots` (shared/migrations.py).
"""

from shared.migrations import run_env

run_env()
