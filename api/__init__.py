"""HTTP API (FastAPI): arrives with the HTTP service issue."""
