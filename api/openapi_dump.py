"""Write the served OpenAPI document to api/openapi.json (`make openapi`)."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from api.app import create_app
from ledger.settings import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m api.openapi_dump", description=__doc__)
    parser.add_argument(
        "target",
        nargs="?",
        type=Path,
        default=Path(__file__).with_name("openapi.json"),
        help="where to write the document (default: api/openapi.json)",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        document = create_app(Settings(data_dir=Path(tmp))).openapi()
    args.target.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
