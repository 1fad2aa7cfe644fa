"""The numbers Niehues et al. 2024 published, which `REPORT.md` shows beside a run's own.

Transcribed from the paper (Computers in Biology and Medicine 174, 108410): Table 2 (FID per
class), Table 3 (classifier accuracy on CRC-VAL-HE-7K), the autoencoders' MS-SSIM, the
memorization table's ADI row and the mean Fleiss' kappa of the rating study. Keys are the
titles the workflow gives the generators (`histosynth.workflow.settings.GENERATORS`).
"""

from __future__ import annotations

PAPER_CLASSES = ("ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM")

FID = {  # Table 2: 10,000 generated images per class against all training tiles of the class
    "KLF8-DM": (73.2, 73.1, 10.6, 22.8, 15.3, 17.1, 14.3, 12.4, 10.3),
    "VQF8-DM": (37.2, 13.2, 18.6, 18.8, 27.0, 23.0, 24.8, 21.9, 21.4),
    "SD v1.4 fine-tuned": (105.9, 164.6, 24.5, 21.6, 16.7, 23.6, 17.8, 20.0, 21.4),
    "styleGAN2": (32.9, 36.8, 15.0, 18.7, 22.4, 20.6, 18.9, 15.6, 15.5),
}

# Table 3: per class, then all test tiles; the paper's synthetic arm is KLF8-DM's images alone
ACCURACY = {
    "synthetic": (0.99, 1.00, 0.43, 0.74, 0.78, 0.78, 0.99, 0.57, 0.95, 0.80),
    "real": (0.95, 0.97, 0.90, 0.71, 0.63, 0.80, 0.99, 0.44, 0.96, 0.81),
    "combined": (0.95, 1.00, 0.89, 0.88, 0.62, 0.77, 0.99, 0.62, 0.96, 0.85),
}

MSSSIM = {"kl": (91.6, 5.3), "vq": (86.4, 7.8)}  # % over the training set, mean and std

# the memorization table's published row (best Pearson r: mean, median, p5, p95)
MEMORIZATION_ADI = {
    "KLF8-DM": (0.33, 0.32, 0.20, 0.46),
    "styleGAN2": (0.29, 0.29, 0.21, 0.40),
    "test": (0.33, 0.31, 0.22, 0.47),
}

FLEISS_KAPPA = {"KLF8-DM": 0.04, "VQF8-DM": 0.08, "SD v1.4 fine-tuned": 0.02, "styleGAN2": 0.06, "real": 0.22}
