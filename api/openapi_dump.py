"""Write the served OpenAPI document to api/openapi.json (`make openapi`)."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from api.app import create_app
from ledger.settings import Settings


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        document = create_app(Settings(data_dir=Path(tmp))).openapi()
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("openapi.json")
    target.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
