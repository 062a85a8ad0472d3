"""Sampling a trained run: conditional and long-video drivers, the mesh, sample.py's library."""
