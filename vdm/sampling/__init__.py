"""Sampling a trained run: conditional drivers, long videos, sampling on the mesh, sample.py's library."""
