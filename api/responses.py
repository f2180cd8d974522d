"""JSON bodies written with orjson, as everywhere else on the hot paths.

Starlette's JSONResponse uses the standard library's encoder, a visible share of a small
request's time (`python -m bench http`); this one only changes how the body is rendered.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse


class OrjsonResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)
