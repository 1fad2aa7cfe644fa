"""The class-conditional StyleGAN2 with ADA and a collapse guard: networks, training, sampling."""
