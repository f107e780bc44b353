"""Alembic's entry point for the results service's revisions.

Run them with `lotgate migrate --service results` (shared/migrations.py).
"""

from shared.migrations import run_env

run_env()
