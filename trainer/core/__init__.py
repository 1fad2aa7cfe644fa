"""Shared by every family: run settings, the accelerate loop, checkpoints, data, model folders."""
