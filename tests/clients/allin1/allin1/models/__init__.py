"""Stand-in for allin1/models/__init__.py (see ../../ORIGIN.md): no re-exports."""
