"""Stand-in for k_diffusion/models/__init__.py (see ../../ORIGIN.md): no re-exports."""
