"""Relays: the receipts changelog to sync deltas, the outbox to federation EDUs."""
