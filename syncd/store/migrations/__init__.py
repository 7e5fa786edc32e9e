"""The store's Alembic migrations: ``env.py`` runs them on the connection ``syncd.store.db`` hands
over, ``versions/`` holds one file per schema change. ``tests/store/test_migrations.py`` compares
the migrated schema with the tables of ``syncd.store.models``.
"""
