"""The read side: views built from the log of record (trail, consent state, ...)."""
