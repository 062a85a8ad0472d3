"""Networks only: the factorized space-time U-Net (unet3d, layers, attention),
TRIP's Temporal Noise Fusion (tnf) and the frame autoencoder (autoencoder)."""
