"""The baseline for the HTTP benchmark: FastAPI answering a constant, nothing else."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse

app = FastAPI()
RECEIPT = {"event_id": "x", "sid": "0" * 32, "position": 1, "recorded_at": "", "hash": "0" * 64}


@app.post("/v1/facts")
async def constant() -> JSONResponse:
    return JSONResponse(RECEIPT, 201)
