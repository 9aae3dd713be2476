"""A Gaussian-mixture prior fitted to latent codes after training (``gmm`` in the ``genkit.priors`` group)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from genkit import Config, ConfigError, DataError, ModelConfig, Prior, ShapeError, option

#: Rows of codes scored at once, bounded so that (components, latent, rows) stays near 2**24 values.
_CHUNK_VALUES = 1 << 24


@dataclass
class GMMConfig(Config):
    components: int = option(10, "mixture components")
    max_iter: int = option(200, "EM iterations at most")
    tol: float = option(1e-5, "EM stops when the mean log-likelihood changes less than this (relative)")
    reg_covar: float = option(1e-6, "covariance floor, times the average code variance")
    kmeans_iter: int = option(10, "Lloyd steps of the k-means initialisation")
    seed: int = option(0, "seed of the k-means++ initialisation")

    positive: ClassVar[tuple[str, ...]] = ("components", "max_iter")

    def validate(self) -> None:
        super().validate()
        if self.kmeans_iter < 0 or self.tol < 0 or self.reg_covar < 0:
            raise ConfigError(
                f"kmeans_iter, tol and reg_covar must be >= 0 (got {self.kmeans_iter}, {self.tol}, {self.reg_covar})"
            )


class GaussianMixturePrior(Prior):
    """Gaussian mixture (full covariance) fitted to training codes by EM: ex-post density estimation.

    Build it with ``genkit.get_prior("gmm", latent, components=10)``, then call ``fit`` on the latent codes
    of the training set (``genkit.priors.fit_prior(model, "gmm", images)`` does both and installs it).
    EM starts from a seeded k-means++ initialisation refined by a few Lloyd steps, runs in float64 on the
    codes' device, and adds ``reg_covar`` times the average code variance to every covariance's diagonal.

    The fitted parameters are buffers of shapes fixed by ``(components, latent)`` (``weights`` (K,),
    ``means`` (K, D), ``scale_tril`` (K, D, D), the Cholesky factors of the covariances, and a ``fitted``
    flag), so a saved state dict reloads into a fresh prior of the same size and moves with ``.to(device)``.
    ``kl`` is the base class's one-draw Monte Carlo estimate.
    """

    config_class = GMMConfig
    fitted_after_training = True

    def __init__(self, config: GMMConfig | int | None = None, dims: ModelConfig | None = None, **options: Any) -> None:
        if isinstance(config, int) and not isinstance(config, bool):  # GaussianMixturePrior(latent, components=K)
            if config < 1:
                raise ConfigError(f"gmm prior: latent must be a positive integer, got {config!r}")
            config, dims = None, ModelConfig(latent=config)
        if config is None:
            config = GMMConfig.from_dict(options, owner="prior gmm")
        super().__init__(config, dims)
        latent, components = self.latent, config.components
        self.components = components
        self.max_iter = config.max_iter
        self.tol = config.tol
        self.reg_covar = config.reg_covar
        self.kmeans_iter = config.kmeans_iter
        self.seed = config.seed
        #: After ``fit``: iterations run, whether EM converged, and the final mean log-likelihood per code.
        self.fit_info: dict[str, Any] = {}
        self.register_buffer("weights", torch.full((components,), 1.0 / components))
        self.register_buffer("means", torch.zeros(components, latent))
        self.register_buffer("scale_tril", torch.eye(latent).repeat(components, 1, 1))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def extra_repr(self) -> str:
        return f"latent={self.latent}, components={self.components}, fitted={bool(self.fitted)}"

    # ----------------------------------------------------------------------------------------------------------
    # Density and sampling

    def _require_fitted(self) -> None:
        if not bool(self.fitted):
            raise ConfigError(
                "fit the gmm prior on latent codes first (prior.fit(model.codes(train_images)), or "
                "genkit.priors.fit_prior(model, 'gmm', train_images)); an unfitted mixture has no parameters"
            )

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` draws (n, latent) on the prior's device; ``generator`` must live on that device too."""
        self._require_fitted()
        component = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.latent, 1, generator=generator, device=self.device, dtype=self.means.dtype)
        return self.means[component] + (self.scale_tril[component] @ eps).squeeze(-1)

    def log_prob(self, z: Tensor) -> Tensor:
        """log p(z) per row of z (N, latent): logsumexp over components of log w_k + log N(z; mu_k, Sigma_k)."""
        self._require_fitted()
        if z.ndim >= 1 and z.ndim != 2 and z.shape[-1] == self.latent:  # leading sample dimensions
            return self.log_prob(z.reshape(-1, self.latent)).view(z.shape[:-1])
        if z.ndim != 2 or z.shape[1] != self.latent:
            raise ShapeError(f"gmm prior: expected codes of shape (N, {self.latent}), got {tuple(z.shape)}")
        dtype = torch.promote_types(z.dtype, self.means.dtype)
        joint = _component_log_prob(
            z.to(dtype), self.weights.to(dtype).log(), self.means.to(dtype), self.scale_tril.to(dtype)
        )
        return torch.logsumexp(joint, dim=1)

    # ----------------------------------------------------------------------------------------------------------
    # Fitting

    @torch.no_grad()
    def fit(self, codes: Tensor) -> None:
        """Fit the mixture to latent codes (N, latent) by EM; deterministic for a given ``seed``."""
        codes = _check_codes(codes, self.latent, self.components)
        dtype = torch.float32 if codes.device.type == "mps" else torch.float64
        x = codes.detach().to(dtype)
        n, d = x.shape
        # A covariance floor on the scale of the codes keeps components from collapsing onto single codes.
        reg = self.reg_covar * max(float(x.var(dim=0).mean()), torch.finfo(dtype).tiny)
        eye = torch.eye(d, dtype=dtype, device=x.device)
        generator = torch.Generator().manual_seed(self.seed)

        labels = _kmeans(x, self.components, self.kmeans_iter, generator)
        resp = torch.nn.functional.one_hot(labels, self.components).to(dtype)
        log_w, means, tril = _m_step(x, resp, reg, eye)

        previous = -math.inf
        converged = False
        iteration = 0
        mean_ll = -math.inf
        for iteration in range(1, self.max_iter + 1):  # noqa: B007 - the count is reported after the loop
            joint = _component_log_prob(x, log_w, means, tril)
            norm = torch.logsumexp(joint, dim=1, keepdim=True)
            mean_ll = float(norm.mean())
            resp = (joint - norm).exp()
            log_w, means, tril = _m_step(x, resp, reg, eye)
            if abs(mean_ll - previous) <= self.tol * max(1.0, abs(mean_ll)):
                converged = True
                break
            previous = mean_ll
        if not (math.isfinite(mean_ll) and torch.isfinite(tril).all() and torch.isfinite(means).all()):
            raise DataError("gmm prior: EM diverged on these codes (non-finite likelihood); check the codes")

        target = self.means.dtype
        self.weights.copy_(log_w.exp().to(target))
        self.means.copy_(means.to(target))
        self.scale_tril.copy_(tril.to(target))
        self.fitted.fill_(True)
        self.fit_info = {"iterations": iteration, "converged": converged, "mean_log_likelihood": mean_ll, "codes": n}


# --------------------------------------------------------------------------------------------------------------
# EM pieces (plain functions on tensors)


def _check_codes(codes: Tensor, latent: int, components: int) -> Tensor:
    if not isinstance(codes, Tensor) or codes.ndim != 2 or codes.shape[1] != latent:
        shape = tuple(codes.shape) if isinstance(codes, Tensor) else type(codes).__name__
        raise ShapeError(f"gmm prior: fit needs codes of shape (N, {latent}), got {shape}")
    if codes.shape[0] < 2 * components:
        raise DataError(
            f"gmm prior: {codes.shape[0]} codes are too few for {components} components; "
            f"give at least {2 * components} (ideally the whole training set) or fewer components"
        )
    if not torch.isfinite(codes).all():
        raise DataError("gmm prior: the codes contain NaN or infinite values")
    return codes


def _component_log_prob(x: Tensor, log_w: Tensor, means: Tensor, tril: Tensor) -> Tensor:
    """(N, K) matrix of log w_k + log N(x_n; mu_k, L_k L_k^T), in chunks of rows to bound memory."""
    k, d = means.shape
    log_det = 2.0 * torch.diagonal(tril, dim1=-2, dim2=-1).log().sum(-1)  # (K,)
    const = log_w - 0.5 * (d * math.log(2 * math.pi) + log_det)  # (K,)
    rows = max(1, _CHUNK_VALUES // max(1, k * d))
    parts = []
    for start in range(0, x.shape[0], rows):
        diff = x[start : start + rows].unsqueeze(0) - means.unsqueeze(1)  # (K, n, D)
        y = torch.linalg.solve_triangular(tril, diff.transpose(1, 2), upper=False)  # (K, D, n)
        parts.append(const.unsqueeze(1) - 0.5 * y.pow(2).sum(1))  # (K, n)
    return torch.cat(parts, dim=1).T


def _m_step(x: Tensor, resp: Tensor, reg: float, eye: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Weights (as logs), means and covariance Cholesky factors from responsibilities (N, K)."""
    n, d = x.shape
    k = resp.shape[1]
    nk = resp.sum(0) + 10 * torch.finfo(x.dtype).eps  # (K,)
    means = (resp.T @ x) / nk.unsqueeze(1)
    cov = torch.zeros(k, d, d, dtype=x.dtype, device=x.device)
    rows = max(1, _CHUNK_VALUES // max(1, k * d))
    for start in range(0, n, rows):
        diff = x[start : start + rows].unsqueeze(0) - means.unsqueeze(1)  # (K, n, D)
        weighted = resp[start : start + rows].T.unsqueeze(2) * diff
        cov += weighted.transpose(1, 2) @ diff
    cov = cov / nk.view(k, 1, 1)
    cov = 0.5 * (cov + cov.transpose(1, 2)) + reg * eye
    return (nk / n).log(), means, _cholesky(cov, reg, eye)


def _cholesky(cov: Tensor, reg: float, eye: Tensor) -> Tensor:
    """Cholesky factors of (K, D, D) covariances, adding growing jitter to any that is not positive definite."""
    jitter = max(reg, torch.finfo(cov.dtype).eps)
    for _ in range(12):
        factor, info = torch.linalg.cholesky_ex(cov)
        bad = info != 0
        if not bool(bad.any()):
            return factor
        cov = cov + (jitter * bad.to(cov.dtype)).view(-1, 1, 1) * eye
        jitter *= 10
    raise DataError("gmm prior: a component's covariance is not positive definite even with jitter; check the codes")


def _nearest(x: Tensor, centres: Tensor) -> Tensor:
    """Index of the nearest centre for each row of x (squared distances up to a per-row constant)."""
    return ((centres**2).sum(1) - 2.0 * x @ centres.T).argmin(1)


def _kmeans(x: Tensor, k: int, iterations: int, generator: torch.Generator, restarts: int = 3) -> Tensor:
    """Cluster labels (N,) of the best of ``restarts`` runs of greedy k-means++ seeding and Lloyd steps.

    Random draws come from the CPU ``generator``, so the result depends only on the seed and the codes.
    """
    best, best_inertia = None, math.inf
    for _ in range(restarts):
        centres = _kmeans_plus_plus(x, k, generator)
        labels = _nearest(x, centres)
        for _ in range(iterations):
            counts = torch.bincount(labels, minlength=k).to(x.dtype)
            sums = torch.zeros_like(centres).index_add_(0, labels, x)
            centres = torch.where(counts.unsqueeze(1) > 0, sums / counts.clamp_min(1).unsqueeze(1), centres)
            new = _nearest(x, centres)
            if torch.equal(new, labels):
                break
            labels = new
        inertia = float(((x - centres[labels]) ** 2).sum())
        if inertia < best_inertia or best is None:
            best, best_inertia = labels, inertia
    return best  # type: ignore[return-value]


def _kmeans_plus_plus(x: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """Greedy k-means++ seeding: each new centre is the best of 2 + log(k) candidates drawn by D² weighting."""
    n = x.shape[0]
    trials = 2 + int(math.log(k))
    first = int(torch.randint(n, (1,), generator=generator))
    centres = [x[first]]
    d2 = ((x - x[first]) ** 2).sum(1)
    for _ in range(1, k):
        p = d2.double().cpu()
        total = float(p.sum())
        if total > 0 and math.isfinite(total):
            candidates = torch.multinomial(p / total, trials, replacement=True, generator=generator)
        else:  # every code coincides with a centre chosen so far
            candidates = torch.randint(n, (trials,), generator=generator)
        candidates = candidates.to(x.device)
        # Potential (sum of squared distances to the nearest centre) if each candidate were added.
        cand = x[candidates]
        dist = (x**2).sum(1).unsqueeze(0) - 2.0 * cand @ x.T + (cand**2).sum(1, keepdim=True)
        cand_d2 = torch.minimum(d2.unsqueeze(0), dist.clamp_min(0))
        best = int(cand_d2.sum(1).argmin())
        centres.append(x[candidates[best]])
        d2 = cand_d2[best]
    return torch.stack(centres)
