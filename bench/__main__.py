"""`make bench`: every benchmark, one table each."""

from __future__ import annotations

import sys

from bench import (
    due,
    erasure_journal,
    http,
    ingest,
    instructions,
    kafka,
    lookup,
    memory,
    projections,
    publish,
    refill,
    register,
    soak,
)


def main() -> int:
    """`python -m bench [NAME] [options]`, NAME one of ingest, http, kafka, publish,
    projections, due, register, journal, lookup, refill, instructions, memory, soak; with no
    name, the four timed benchmarks (`instructions` needs valgrind and is run on its own;
    `memory` and `soak` measure bytes, not time; `publish`, `due`, `register`, `journal`,
    `lookup` and `refill` time what no target names)."""
    from ledger.runtime import tune

    tune()  # the same runtime tuning the consent-ledger command applies
    args = sys.argv[1:]
    if args and args[0] == "projections":
        projections.main(args[1:])
    elif args and args[0] == "ingest":
        ingest.main(args[1:])
    elif args and args[0] == "http":
        http.main(args[1:])
    elif args and args[0] == "kafka":
        kafka.main(args[1:])
    elif args and args[0] == "publish":
        publish.main(args[1:])
    elif args and args[0] == "instructions":
        instructions.main(args[1:])
    elif args and args[0] == "memory":
        memory.main(args[1:])
    elif args and args[0] == "soak":
        soak.main(args[1:])
    elif args and args[0] == "due":
        due.main(args[1:])
    elif args and args[0] == "register":
        register.main(args[1:])
    elif args and args[0] == "lookup":
        lookup.main(args[1:])
    elif args and args[0] == "refill":
        refill.main(args[1:])
    elif args and args[0] == "journal":
        erasure_journal.main(args[1:])
    else:
        ingest.main(args)
        http.main([])
        kafka.main([])
        projections.main([])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
