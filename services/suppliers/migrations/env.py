"""Alembic's entry point for the suppliers service's revisions.

Run them with `lotgate migrate --service suppliers` (shared/migrations.py).
"""

from shared.migrations import run_env

run_env()
