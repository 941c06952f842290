"""Instrument links spoken from Python: the potentiostat link (both ends)."""
