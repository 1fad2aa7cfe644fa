"""Training backend: the paper's generators and classifier, one package per model family.

`core/` holds what every family shares (the run's settings and presets, the accelerate loop,
checkpoints, the pool as a dataset, the model folder's `histosynth.json`); `autoencoder/`,
`diffusion/` (LDM and SD fine-tune), `stylegan2/` and `classifier/` each hold one family whole;
`compvis/` imports the published CompVis checkpoints as model folders; `generate` writes a pool
from any generator's folder. No family imports another except the two composers (`compvis`,
`generate`), as `tests/trainer/test_layout.py` checks. The trainer imports only the core
(`histosynth`), never the evaluator or the rating app.
"""
