"""Stand-in for NAF's src/layers/__init__.py (see ../../ORIGIN.md): the original also imports the
convolutional encoder, which the attention layer does not need."""
