"""Stand-in for k_diffusion/layers.py (see ../ORIGIN.md): image_transformer_v2 uses it only in the
full denoiser (``layers.FourierFeatures``), which the tests do not build."""
