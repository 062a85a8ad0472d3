"""The denoiser network: (z_t, logsnr, label, cond, is_image) -> prediction."""
