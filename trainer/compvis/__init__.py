"""The published CompVis checkpoints as model folders of the autoencoder and diffusion families."""
