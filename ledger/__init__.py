"""The write side of the consent ledger: facts, rules, personal-data encryption and the chain.

Nothing in this package knows about HTTP or Kafka; those are adapters around it.
"""
