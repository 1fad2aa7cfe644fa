"""Memorization audit: the closest training tile of each generated tile, and a verdict."""
