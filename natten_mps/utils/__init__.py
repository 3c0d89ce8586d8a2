"""Helpers of natten-mps 0.3.3's ``natten_mps.utils`` kept for code that imports them (``window``)."""
