"""The web admin: SQLite-backed JSON API (Klein), browser UI and live updates (autobahn)."""
