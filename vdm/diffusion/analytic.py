"""The exact denoiser of Gaussian data, for testing samplers and losses.

If x ~ N(m, S) (x flattened to D numbers) and z_t = alpha x + sigma eps, then
z_t is Gaussian and the posterior mean of the noise is closed form:
  E[eps | z_t] = sigma (alpha^2 S + sigma^2 I)^{-1} (z_t - alpha m).
With S = U diag(l) U^T this costs two matrix products per call. A sampler
driven by this denoiser must reproduce N(m, S) exactly in the limit of many
steps, which is how tests check the samplers without training a network.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from vdm.diffusion import gaussian
from vdm.diffusion import schedules


@dataclasses.dataclass(frozen=True)
class GaussianData:
  """Data distribution N(mean, cov) over videos of shape ``shape``.

  Attributes:
    mean: [D] mean, D = prod(shape).
    eigvals: [D] eigenvalues of the covariance (>= 0).
    eigvecs: [D, D] orthonormal eigenvectors (columns).
    shape: the video shape [T, H, W, C] that D numbers are reshaped to.
  """
  mean: jax.Array
  eigvals: jax.Array
  eigvecs: jax.Array
  shape: tuple[int, ...]

  @classmethod
  def create(cls, mean: np.ndarray, cov: np.ndarray, shape) -> 'GaussianData':
    """Builds it from a mean [D] and a symmetric PSD covariance [D, D]."""
    cov = np.asarray(cov, np.float64)
    eigvals, eigvecs = np.linalg.eigh(0.5 * (cov + cov.T))
    return cls(jnp.asarray(mean, jnp.float32), jnp.asarray(np.maximum(eigvals, 0), jnp.float32),
               jnp.asarray(eigvecs, jnp.float32), tuple(shape))

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
    alpha, sigma = schedules.alpha_sigma(jnp.asarray(logsnr, jnp.float32).reshape(b, 1))
    r = z.reshape(b, -1) - alpha * self.mean  # [B, D]
    coeff = sigma / (alpha**2 * self.eigvals + sigma**2)  # [B, D]
    eps = ((r @ self.eigvecs) * coeff) @ self.eigvecs.T
    return eps.reshape(z.shape)

  def model_output(self, z: jax.Array, logsnr: jax.Array, parameterization: str = 'eps') -> jax.Array:
    """The exact denoiser in any parameterization ('eps', 'v' or 'x')."""
    eps = self.eps_prediction(z, logsnr)
    if parameterization == 'eps':
      return eps
    alpha, sigma = schedules.alpha_sigma(gaussian.expand_to(logsnr, z))
    # x_hat from the posterior mean directly, stable also as sigma -> 0.
    b = z.shape[0]
    a2 = alpha.reshape(b, 1) ** 2
    s2 = sigma.reshape(b, 1) ** 2
    r = z.reshape(b, -1) - alpha.reshape(b, 1) * self.mean
    gain = alpha.reshape(b, 1) * self.eigvals / (a2 * self.eigvals + s2)
    x = (self.mean + ((r @ self.eigvecs) * gain) @ self.eigvecs.T).reshape(z.shape)
    if parameterization == 'x':
      return x
    gaussian.check_parameterization(parameterization)
    return alpha * eps - sigma * x

  def expected_eps_loss(self, logsnr: float) -> float:
    """E ||eps - E[eps|z]||^2 / D at one log-SNR: the loss of the exact denoiser."""
    alpha2 = float(jax.nn.sigmoid(logsnr))
    sigma2 = 1.0 - alpha2
    l = np.asarray(self.eigvals, np.float64)
    return float(np.mean(alpha2 * l / (alpha2 * l + sigma2)))

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
