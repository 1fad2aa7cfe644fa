"""Pool metrics: image features, FID, KID, t-SNE maps and autoencoder MS-SSIM."""
