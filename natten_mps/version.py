"""The package version (``natten_mps.version.__version__``, where natten-mps 0.3.3 has it)."""
__version__ = "0.1.0"
