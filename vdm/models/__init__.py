"""Networks only: the factorized space-time U-Net (unet3d, layers, attention),
the text encoder (text) and its byte tokenizer (tokenizer, numpy only),
TRIP's Temporal Noise Fusion (tnf) and the frame autoencoder (autoencoder)."""
