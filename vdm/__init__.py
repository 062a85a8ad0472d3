"""Video diffusion models in JAX/Flax: the factorized space-time U-Net of Ho et al. (2022)."""
