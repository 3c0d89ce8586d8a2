"""The package version (``natten_mps.version.__version__``, where natten-mps 0.3.3 has it).

One number for both libraries and the distribution; CHANGELOG.md says what each version holds.
"""
__version__ = "0.3.0"
