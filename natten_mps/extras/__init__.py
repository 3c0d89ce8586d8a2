"""Extras: entry points for specific model families (``allin1``: DiNAT-style QK+RPB / AV)."""
