"""The SQL catalog: schema (tables), engine/session helpers (db), queries (repo), migrations (migrate)."""
