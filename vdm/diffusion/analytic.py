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

  def ode_solution(self, z: jax.Array, logsnr_t: jax.Array,
                   logsnr_s: jax.Array) -> jax.Array:
    """The exact flow of the probability-flow ODE from lambda_t to lambda_s.

    z_t ~ N(alpha_t m, alpha_t^2 S + sigma_t^2 I), whose score is linear in z
    and diagonal in S's eigenbasis; so is the ODE, and each eigen-coordinate k
    evolves on its own. A linear flow is orientation preserving (it starts at
    the identity and never degenerates) and carries N(alpha_t m_k, v_t) to
    N(alpha_s m_k, v_s), v = alpha^2 l_k + sigma^2, so it scales the centred
    coordinate by sqrt(v_s / v_t):
      z_s = alpha_s m + U diag(sqrt(v_s / v_t)) U^T (z_t - alpha_t m).
    lambda_s = +inf gives the data end of the trajectory (alpha = 1, sigma = 0).

    Args:
      z: z_t [B, *shape].
      logsnr_t: lambda_t [B].
      logsnr_s: lambda_s [B] (either direction; +inf allowed).

    Returns:
      z_s [B, *shape].
    """
    b = z.shape[0]
    alpha_t, sigma_t = schedules.alpha_sigma(jnp.asarray(logsnr_t, jnp.float32).reshape(b, 1))
    alpha_s, sigma_s = schedules.alpha_sigma(jnp.asarray(logsnr_s, jnp.float32).reshape(b, 1))
    r = z.reshape(b, -1) - alpha_t * self.mean  # [B, D]
    scale = jnp.sqrt((alpha_s**2 * self.eigvals + sigma_s**2) /
                     (alpha_t**2 * self.eigvals + sigma_t**2))  # [B, D]
    z_s = alpha_s * self.mean + ((r @ self.eigvecs) * scale) @ self.eigvecs.T
    return z_s.reshape(z.shape)

  def expected_eps_loss(self, logsnr: float) -> float:
    """E ||eps - E[eps|z]||^2 / D at one log-SNR: the loss of the exact denoiser."""
    alpha2 = float(jax.nn.sigmoid(logsnr))
    sigma2 = 1.0 - alpha2
    l = np.asarray(self.eigvals, np.float64)
    return float(np.mean(alpha2 * l / (alpha2 * l + sigma2)))

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
    s = np.asarray(self.cov, np.float64)
    a, b = known, ~known
    s_aa, s_ba, s_bb = s[np.ix_(a, a)], s[np.ix_(b, a)], s[np.ix_(b, b)]
    gain = s_ba @ np.linalg.inv(s_aa)
    mean = m[b] + gain @ (np.asarray(x_known, np.float64) - m[a])
    return mean, s_bb - gain @ s_ba.T
