"""Training backend: the paper's autoencoders and latent diffusion model, and `generate` for pools.

One module per model, as in diffusers: `autoencoder` (KL-f8 and VQ-f8, trained as the CompVis
first stages), `ldm` (the class-conditional latent diffusion model), `generate` (pools from any
trained model), `sd_finetune` (Stable Diffusion v1.4 fine-tuned on the tiles), `compvis_import`
(the published CompVis checkpoints as model folders). Shared pieces are small: `options`
(settings and presets), `data` (a pool as a dataset), `model_folder` (`histosynth.json`),
`checkpoints` (resume), `loop` (the accelerate run). The trainer imports only the core
(`histosynth`), never the evaluator or the rating app.
"""
