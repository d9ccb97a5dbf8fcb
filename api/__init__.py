"""The HTTP API (FastAPI) and the dashboard it serves; reads the store and the relational state only."""
