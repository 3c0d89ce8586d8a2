"""Stand-in package root for the vendored All-In-One modules (see ../ORIGIN.md); the original
imports the whole analyzer (audio I/O, madmom, hydra), which the NA layers do not need."""
