"""The f=8 autoencoders (KL-f8, VQ-f8) as the CompVis first stages: options, model, losses."""
