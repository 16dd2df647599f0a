"""Frechet distance between Gaussians, the statistic behind FID.

    d^2((mu1, S1), (mu2, S2)) = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2})

Dowson & Landau 1982 (the 2-Wasserstein distance between Gaussians); used as FID in Heusel et
al. 2017, eq. 6.

Matrix square root: instead of scipy.linalg.sqrtm on the non-symmetric product S1 S2 (which
needs an eps * I offset when the product is near-singular and returns spurious imaginary
parts), we use the symmetric route. With R = S1^{1/2} (the PSD root, via eigh), the matrices
S1 S2 = R (R S2) and R S2 R = (R S2) R have the same eigenvalues (AB and BA always do), and
R S2 R is symmetric PSD. So tr((S1 S2)^{1/2}) = sum_i sqrt(lambda_i(R S2 R)), computed with two
symmetric eigendecompositions in float64. This is exact for singular (rank-deficient)
covariances: no offset, no imaginary part; negative eigenvalues from rounding are clipped to 0.
"""

from __future__ import annotations

import numpy as np


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of features [N, D] (N >= 2): (mu float64 [D], sigma float64 [D, D]).

    The covariance is the unbiased sample covariance (divides by N - 1), as in the FID reference.
    """
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must be [N, D] with N >= 2, got shape {f.shape}")
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric PSD square root of a symmetric matrix [D, D] (negative eigenvalues -> 0)."""
    w, v = np.linalg.eigh(sigma)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr((sigma1 sigma2)^{1/2}) for symmetric PSD [D, D] matrices, in float64 (see module doc)."""
    root = _psd_sqrt(sigma1)
    middle = root @ sigma2 @ root
    eigenvalues = np.linalg.eigvalsh(0.5 * (middle + middle.T))
    return float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Squared Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (what FID reports).

    mu: [D]; sigma: [D, D] symmetric PSD (symmetrized here against rounding). Float64. The result
    is clipped at 0 (tiny negatives are rounding, the true value is a squared distance).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0] if mu1.ndim == 1 else -1
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            f"expected mu [D] and sigma [D, D] for both Gaussians, got {mu1.shape}, {s1.shape}, {mu2.shape}, {s2.shape}"
        )
    if not all(np.all(np.isfinite(a)) for a in (mu1, mu2, s1, s2)):
        raise ValueError("Gaussian statistics contain NaN or inf")
    s1, s2 = 0.5 * (s1 + s1.T), 0.5 * (s2 + s2.T)
    diff = mu1 - mu2
    value = diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt_product(s1, s2)
    return max(float(value), 0.0)
