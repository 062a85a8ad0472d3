"""The exact denoiser of Gaussian data, for testing samplers and losses.

If x ~ N(m, S) (x flattened to D numbers) and z_t = alpha x + sigma eps, then
z_t is Gaussian and the posterior mean of the noise is closed form:
  E[eps | z_t] = sigma (alpha^2 S + sigma^2 I)^{-1} (z_t - alpha m).
With S = U diag(l) U^T this costs two matrix products per call. A sampler
driven by this denoiser must reproduce N(m, S) exactly in the limit of many
steps, which is how tests check the samplers without training a network.

Correlated noise eps ~ N(0, C) (VideoFusion's decomposed law, C acting on
frames, vdm/diffusion/decomposed.py) gives
  E[eps | z_t] = sigma C (alpha^2 S + sigma^2 C)^{-1} (z_t - alpha m).
With C = L L^T this is the i.i.d. denoiser of the whitened data L^-1 x
mapped back by L: with L^-1 S L^-T = U' diag(l') U'^T it costs the same two
products, through the bases L^-T U' and U'^T L^T instead of U and U^T.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from vdm.diffusion import gaussian
from vdm.diffusion import schedules


@dataclasses.dataclass(frozen=True)
class GaussianData:
  """Data distribution N(mean, cov) over videos of shape ``shape``, and the
  exact denoiser of the forward process z_t = alpha x + sigma eps.

  Attributes:
    mean: [D] mean, D = prod(shape).
    eigvals: [D] eigenvalues of the covariance (>= 0).
    eigvecs: [D, D] orthonormal eigenvectors (columns).
    shape: the video shape [T, H, W, C] that D numbers are reshaped to.
    noise_cov: [D, D] covariance C of the forward process's noise; None for
      i.i.d. standard normal noise (C = I).
    white_eigvals: [D] eigenvalues l' of the whitened covariance
      L^-1 S L^-T (C = L L^T); None when noise_cov is None.
    analysis: [D, D] L^-T U' (U' the whitened eigenvectors); None when
      noise_cov is None.
    synthesis: [D, D] U'^T L^T; None when noise_cov is None.
  """
  mean: jax.Array
  eigvals: jax.Array
  eigvecs: jax.Array
  shape: tuple[int, ...]
  noise_cov: Optional[jax.Array] = None
  white_eigvals: Optional[jax.Array] = None
  analysis: Optional[jax.Array] = None
  synthesis: Optional[jax.Array] = None

  @classmethod
  def create(cls, mean: np.ndarray, cov: np.ndarray, shape,
             noise_cov: Optional[np.ndarray] = None) -> 'GaussianData':
    """Builds it from a mean [D] and a symmetric PSD covariance [D, D].

    Args:
      mean: [D].
      cov: [D, D] data covariance S.
      shape: the video shape the D numbers are reshaped to.
      noise_cov: optional [D, D] positive definite noise covariance C (for
        a frame covariance, decomposed.expand_frame_covariance); None: C = I.
    """
    cov = np.asarray(cov, np.float64)
    eigvals, eigvecs = np.linalg.eigh(0.5 * (cov + cov.T))
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    data = cls(f32(mean), f32(np.maximum(eigvals, 0)), f32(eigvecs), tuple(shape))
    if noise_cov is None:
      return data
    noise_cov = np.asarray(noise_cov, np.float64)
    chol = np.linalg.cholesky(0.5 * (noise_cov + noise_cov.T))  # L, C = L L^T
    chol_inv = np.linalg.inv(chol)
    white = chol_inv @ cov @ chol_inv.T
    white_vals, white_vecs = np.linalg.eigh(0.5 * (white + white.T))
    return dataclasses.replace(
        data, noise_cov=f32(noise_cov), white_eigvals=f32(np.maximum(white_vals, 0)),
        analysis=f32(chol_inv.T @ white_vecs), synthesis=f32(white_vecs.T @ chol.T))

  def _basis(self) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(eigenvalues, analysis, synthesis) of the denoiser's diagonal form.

    E[eps | z] = ((z - alpha m) A diag(sigma / (alpha^2 l + sigma^2))) B in
    row-vector form: A = U, B = U^T for i.i.d. noise; A = L^-T U',
    B = U'^T L^T for noise N(0, L L^T).
    """
    if self.noise_cov is None:
      return self.eigvals, self.eigvecs, self.eigvecs.T
    return self.white_eigvals, self.analysis, self.synthesis

  @property
  def cov(self) -> jax.Array:
    return (self.eigvecs * self.eigvals) @ self.eigvecs.T

  def sample(self, rng: jax.Array, n: int) -> jax.Array:
    """n exact samples, [n, *shape]."""
    e = jax.random.normal(rng, (n, self.mean.shape[0]))
    x = self.mean + (e * jnp.sqrt(self.eigvals)) @ self.eigvecs.T
    return x.reshape((n,) + self.shape)

  def eps_prediction(self, z: jax.Array, logsnr: jax.Array) -> jax.Array:
    """E[eps | z_t]: the exact eps-parameterized denoiser.

    Args:
      z: z_t [B, *shape].
      logsnr: lambda_t [B].

    Returns:
      E[eps | z_t], [B, *shape].
    """
    b = z.shape[0]
    vals, analysis, synthesis = self._basis()
    alpha, sigma = schedules.alpha_sigma(jnp.asarray(logsnr, jnp.float32).reshape(b, 1))
    r = z.reshape(b, -1) - alpha * self.mean  # [B, D]
    coeff = sigma / (alpha**2 * vals + sigma**2)  # [B, D]
    eps = ((r @ analysis) * coeff) @ synthesis
    return eps.reshape(z.shape)

  def model_output(self, z: jax.Array, logsnr: jax.Array, parameterization: str = 'eps') -> jax.Array:
    """The exact denoiser in any parameterization ('eps', 'v' or 'x')."""
    eps = self.eps_prediction(z, logsnr)
    if parameterization == 'eps':
      return eps
    alpha, sigma = schedules.alpha_sigma(gaussian.expand_to(logsnr, z))
    # x_hat from the posterior mean directly, stable also as sigma -> 0.
    b = z.shape[0]
    vals, analysis, synthesis = self._basis()
    a2 = alpha.reshape(b, 1) ** 2
    s2 = sigma.reshape(b, 1) ** 2
    r = z.reshape(b, -1) - alpha.reshape(b, 1) * self.mean
    # E[x | z] = m + alpha S (alpha^2 S + sigma^2 C)^-1 (z - alpha m), the
    # same diagonal form with gain alpha l / (alpha^2 l + sigma^2).
    gain = alpha.reshape(b, 1) * vals / (a2 * vals + s2)
    x = (self.mean + ((r @ analysis) * gain) @ synthesis).reshape(z.shape)
    if parameterization == 'x':
      return x
    gaussian.check_parameterization(parameterization)
    return alpha * eps - sigma * x

  def ode_solution(self, z: jax.Array, logsnr_t: jax.Array,
                   logsnr_s: jax.Array) -> jax.Array:
    """The exact flow of the probability-flow ODE from lambda_t to lambda_s.

    z_t ~ N(alpha_t m, alpha_t^2 S + sigma_t^2 C), whose score is linear in z.
    In the whitened coordinates w = L^-1 z (C = L L^T; L = I for i.i.d.
    noise) the noise is i.i.d. and the data covariance is S' = L^-1 S L^-T,
    so the ODE is diagonal in S''s eigenbasis U' and each eigen-coordinate k
    evolves on its own. A linear flow is orientation preserving (it starts at
    the identity and never degenerates) and carries N(alpha_t m'_k, v_t) to
    N(alpha_s m'_k, v_s), v = alpha^2 l'_k + sigma^2, so it scales the centred
    coordinate by sqrt(v_s / v_t); mapped back by L:
      z_s = alpha_s m + L U' diag(sqrt(v_s / v_t)) U'^T L^-1 (z_t - alpha_t m).
    The deterministic samplers discretize this same flow: their updates are
    linear in z, x_hat and eps_hat, so they commute with L.
    lambda_s = +inf gives the data end of the trajectory (alpha = 1, sigma = 0).

    Args:
      z: z_t [B, *shape].
      logsnr_t: lambda_t [B].
      logsnr_s: lambda_s [B] (either direction; +inf allowed).

    Returns:
      z_s [B, *shape].
    """
    b = z.shape[0]
    vals, analysis, synthesis = self._basis()
    alpha_t, sigma_t = schedules.alpha_sigma(jnp.asarray(logsnr_t, jnp.float32).reshape(b, 1))
    alpha_s, sigma_s = schedules.alpha_sigma(jnp.asarray(logsnr_s, jnp.float32).reshape(b, 1))
    r = z.reshape(b, -1) - alpha_t * self.mean  # [B, D]
    scale = jnp.sqrt((alpha_s**2 * vals + sigma_s**2) /
                     (alpha_t**2 * vals + sigma_t**2))  # [B, D]
    z_s = alpha_s * self.mean + ((r @ analysis) * scale) @ synthesis
    return z_s.reshape(z.shape)

  def expected_eps_loss(self, logsnr: float) -> float:
    """E ||eps - E[eps|z]||^2 / D at one log-SNR: the loss of the exact denoiser.

    tr(C - sigma^2 C (alpha^2 S + sigma^2 C)^-1 C) / D; in the diagonal form
    (tr C - sigma^2 sum_j G_jj / (alpha^2 l_j + sigma^2)) / D with
    G_jj = ||row j of the synthesis||^2 (1 for i.i.d. noise, giving
    mean(alpha^2 l / (alpha^2 l + sigma^2))).
    """
    alpha2 = float(jax.nn.sigmoid(logsnr))
    sigma2 = 1.0 - alpha2
    if self.noise_cov is None:
      l = np.asarray(self.eigvals, np.float64)
      return float(np.mean(alpha2 * l / (alpha2 * l + sigma2)))
    vals, _, synthesis = (np.asarray(a, np.float64) for a in self._basis())
    gram = np.sum(synthesis**2, axis=1)  # G_jj
    trace = np.trace(np.asarray(self.noise_cov, np.float64))
    return float((trace - sigma2 * np.sum(gram / (alpha2 * vals + sigma2))) / len(vals))

  def _conditional_gain(self, known: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(gain [D_b, D_a], cov [D_b, D_b]): E[x^b | x^a] = m_b + gain (x^a - m_a)."""
    known = np.asarray(known, bool)
    v, l = np.asarray(self.eigvecs, np.float64), np.asarray(self.eigvals, np.float64)
    s = (v * l) @ v.T  # In numpy: also usable while tracing a caller.
    a, b = known, ~known
    s_aa, s_ba, s_bb = s[np.ix_(a, a)], s[np.ix_(b, a)], s[np.ix_(b, b)]
    gain = s_ba @ np.linalg.inv(s_aa)
    return gain, s_bb - gain @ s_ba.T

  def conditional(self, known: np.ndarray, x_known: np.ndarray):
    """The exact law of the unknown coordinates given the known ones.

    Args:
      known: [D] bool, True for coordinates of x^a.
      x_known: [known.sum()] the values of x^a.

    Returns:
      (mean [D_b], cov [D_b, D_b]) of p(x^b | x^a) as float64 numpy.
    """
    known = np.asarray(known, bool)
    m = np.asarray(self.mean, np.float64)
    gain, cov = self._conditional_gain(known)
    mean = m[~known] + gain @ (np.asarray(x_known, np.float64) - m[known])
    return mean, cov

  def conditional_eps_prediction(self, z: jax.Array, logsnr: jax.Array, known: np.ndarray,
                                 x_known: jax.Array) -> jax.Array:
    """E[eps | z_t, x^a]: the exact denoiser when the coordinates x^a are given clean.

    The known coordinates' noise is determined, (z^a - alpha x^a) / sigma;
    the others' is the exact denoiser of p(x^b | x^a) = N(m_b + G (x^a - m_a),
    S_b|a) at z^b (their noise is independent of x^a and of eps^a).

    Args:
      z: z_t [B, *shape].
      logsnr: lambda_t [B].
      known: [D] bool numpy mask of the given coordinates (static).
      x_known: [B, D_a] their clean values, per example.

    Returns:
      [B, *shape].
    """
    known = np.asarray(known, bool)
    b = z.shape[0]
    gain, cov = self._conditional_gain(known)
    eigvals, eigvecs = np.linalg.eigh(cov)
    eigvals = jnp.asarray(np.maximum(eigvals, 0), jnp.float32)
    eigvecs = jnp.asarray(eigvecs, jnp.float32)
    alpha, sigma = schedules.alpha_sigma(jnp.asarray(logsnr, jnp.float32).reshape(b, 1))
    m = np.asarray(self.mean, np.float64)
    mean_b = (jnp.asarray(m[~known], jnp.float32) +
              (x_known - jnp.asarray(m[known], jnp.float32)) @ jnp.asarray(gain.T, jnp.float32))
    flat = z.reshape(b, -1)
    r = flat[:, ~known] - alpha * mean_b  # [B, D_b]
    eps_b = ((r @ eigvecs) * (sigma / (alpha**2 * eigvals + sigma**2))) @ eigvecs.T
    eps_a = (flat[:, known] - alpha * x_known) / sigma
    eps = jnp.zeros_like(flat).at[:, known].set(eps_a).at[:, ~known].set(eps_b)
    return eps.reshape(z.shape)

  def expected_conditional_eps_loss(self, logsnr: float, known: np.ndarray) -> float:
    """E ||eps - E[eps | z_t, x^a]||^2 / D at one log-SNR (0 on the known coordinates)."""
    _, cov = self._conditional_gain(known)
    alpha2 = float(jax.nn.sigmoid(logsnr))
    l = np.maximum(np.linalg.eigvalsh(cov), 0.0)
    return float(np.sum(alpha2 * l / (alpha2 * l + 1.0 - alpha2)) / self.mean.shape[0])
