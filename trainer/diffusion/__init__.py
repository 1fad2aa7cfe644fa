"""The class-conditional LDM and the Stable Diffusion fine-tune: latents, training, sampling."""
