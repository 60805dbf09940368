"""Alembic revisions. A package only so setuptools ships it; Alembic skips this file."""
