"""Kafka mode: the ledger topic as the log of record, behind the library's persistence seam.

Nothing in the domain imports this package; the application reaches it only through
`PERSISTENCE_MODULE` (see `ledger.application.persistence_env`) and the worker.
"""
