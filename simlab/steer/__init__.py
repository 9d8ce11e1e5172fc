"""Steering vectors: directions added to the residual stream, their files and their library."""
