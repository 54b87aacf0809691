"""HTTP adapter (FastAPI) and process entry points (CLI, the all-in-one runner)."""
