"""Stand-in package root for the vendored k-diffusion modules (see ../ORIGIN.md); the original
imports the whole library (sampling, evaluation, datasets)."""
