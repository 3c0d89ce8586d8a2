"""Metal shader sources; installed as natten_mps._shaders (see setup.py)."""
