"""trainer: autoencoders, latent diffusion, SD fine-tuning, StyleGAN2 and the classifier."""
