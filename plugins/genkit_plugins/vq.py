"""Vector quantisation (van den Oord et al. 2017): the ``vq`` encoder, the ``vq`` loss and the ``categorical`` prior.

The latent vector of ``latent`` numbers is read as ``latent / code_dim`` positions of ``code_dim`` numbers; each
position is replaced by its nearest of ``codebook`` learned vectors. The decoder is any decoder of the latent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from genkit import Batch, Config, ConfigError, Loss, LossOutput, Model, ModelConfig, Posterior, Prior, option
from genkit.losses import LikelihoodConfig, reconstruction_nll
from genkit_plugins.nets import ConvEncoder, ConvEncoderConfig, ConvNetConfig


@dataclass
class VQPosterior(Posterior):
    """A categorical (one-hot) posterior: each position's code index, the code before quantisation and after.

    ``mean`` is the quantised code with the straight-through gradient: its value is ``quantized``, its gradient
    goes to ``latent`` (the encoder's output). There is no density.
    """

    indices: Tensor | None = None  #: (N, positions) codebook indices
    latent: Tensor | None = None  #: (N, latent) the encoder's output before quantisation
    quantized: Tensor | None = None  #: (N, latent) the nearest codebook vectors (gradient to the codebook)


@dataclass
class VQEncoderConfig(ConvNetConfig):
    codebook: int = option(256, "vectors in the codebook")
    code_dim: int = option(2, "numbers per quantised position (latent / code_dim positions)")
    ema: bool = option(False, "update the codebook by exponential moving averages instead of its loss term")
    decay: float = option(0.99, "EMA decay of the codebook updates")

    positive: ClassVar[tuple[str, ...]] = ("channels", "hidden", "codebook", "code_dim")

    def validate(self) -> None:
        super().validate()
        if not 0 < self.decay < 1:
            raise ConfigError(f"decay must be between 0 and 1, got {self.decay}")


class VQConvEncoder(ConvEncoder):
    """The conv encoder's point code, each of its positions quantised to the nearest codebook vector."""

    config_class = VQEncoderConfig
    quantizes: ClassVar[bool] = True

    def __init__(self, config: VQEncoderConfig, dims: ModelConfig) -> None:
        if dims.latent % config.code_dim:
            raise ConfigError(f"vq encoder: latent ({dims.latent}) must be a multiple of code_dim ({config.code_dim})")
        net_options = {k: getattr(config, k) for k in ConvNetConfig.defaults()}
        super().__init__(ConvEncoderConfig(**net_options, head="deterministic"), dims)
        self.config = config  # the vq options, not the inner conv net's
        self.positions = dims.latent // config.code_dim
        self.codebook = nn.Parameter(torch.empty(config.codebook, config.code_dim).uniform_(-1, 1))
        # set from the first training batch's codes: a codebook far from the codes leaves most vectors unused
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))
        #: moving average of the share of codes each vector takes; vectors that fall out of use are restarted
        self.register_buffer("usage", torch.full((config.codebook,), 1.0 / config.codebook))
        if config.ema:  # moved by averages of the codes assigned to each vector, not by gradients
            self.codebook.requires_grad_(False)
            self.register_buffer("ema_count", torch.ones(config.codebook))
            self.register_buffer("ema_sum", self.codebook.detach().clone())

    def nearest(self, z: Tensor) -> Tensor:
        """Index of the nearest codebook vector for each position of ``z`` (N, latent): (N, positions)."""
        flat = z.reshape(-1, self.config.code_dim).float()
        book = self.codebook.float()
        distance = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ book.T + book.pow(2).sum(1)[None]
        return distance.argmin(1).view(z.shape[0], self.positions)

    def lookup(self, indices: Tensor) -> Tensor:
        """The code (N, latent) for codebook ``indices`` (N, positions)."""
        return self.codebook[indices].reshape(indices.shape[0], -1)

    def forward(self, x: Tensor) -> VQPosterior:
        latent = super().forward(x).mean
        if self.training and not bool(self.initialised):
            self._initialise(latent.detach())
        indices = self.nearest(latent.detach())
        if self.training:
            if self.config.ema:
                self._ema_update(latent.detach(), indices)
            self._restart_unused(latent.detach(), indices)
        quantized = self.lookup(indices).to(latent.dtype)
        # straight through: the value of the quantised code (to rounding), the gradient of the encoder's output;
        # without gradients the code is exactly the codebook vectors
        code = latent + (quantized - latent).detach() if latent.requires_grad else quantized
        return VQPosterior(code, indices=indices, latent=latent, quantized=quantized)

    @torch.no_grad()
    def _initialise(self, latent: Tensor) -> None:
        pieces = latent.reshape(-1, self.config.code_dim).float()
        pick = torch.randint(len(pieces), (self.config.codebook,), device=pieces.device)
        jitter = 0.01 * pieces.std() * torch.randn(self.codebook.shape, device=pieces.device)
        self.codebook.copy_(pieces[pick] + jitter)  # distinct even where a piece is picked twice
        if self.config.ema:
            self.ema_sum.copy_(self.codebook * self.ema_count[:, None])
        self.initialised.fill_(True)

    @torch.no_grad()
    def _restart_unused(self, latent: Tensor, indices: Tensor) -> None:
        """Move vectors that take almost no codes onto codes of this batch: the encoder's codes drift away from a
        codebook set at the start, and unused vectors would never be moved by the codebook term."""
        share = torch.bincount(indices.reshape(-1), minlength=self.config.codebook).float() / indices.numel()
        self.usage.mul_(0.9).add_(share, alpha=0.1)  # a vector unused for ~30 steps is restarted
        dead = self.usage < 0.03 / self.config.codebook
        if dead.any():
            pieces = latent.reshape(-1, self.config.code_dim).float()
            pick = torch.randint(len(pieces), (int(dead.sum()),), device=pieces.device)
            self.codebook[dead] = pieces[pick]
            self.usage[dead] = 1.0 / self.config.codebook
            if self.config.ema:
                self.ema_count[dead] = 1.0
                self.ema_sum[dead] = pieces[pick]

    @torch.no_grad()
    def _ema_update(self, latent: Tensor, indices: Tensor) -> None:
        c = self.config
        flat = latent.reshape(-1, c.code_dim).float()
        onehot = nn.functional.one_hot(indices.reshape(-1), c.codebook).float()
        self.ema_count.mul_(c.decay).add_(onehot.sum(0), alpha=1 - c.decay)
        self.ema_sum.mul_(c.decay).add_(onehot.T @ flat, alpha=1 - c.decay)
        total = self.ema_count.sum()
        count = (self.ema_count + 1e-5) / (total + c.codebook * 1e-5) * total  # Laplace smoothing: no zero counts
        self.codebook.copy_(self.ema_sum / count[:, None])


@dataclass
class VQLossConfig(LikelihoodConfig):
    commitment: float = option(0.25, "weight beta of the commitment term |z_e - sg(z_q)|^2")

    non_negative: ClassVar[tuple[str, ...]] = ("commitment",)


class VQLoss(Loss):
    """VQ-VAE loss: reconstruction from the quantised code + a codebook term + beta times a commitment term.

    The codebook term is |sg(z_e) - z_q|^2 (left out when the codebook moves by EMA), the commitment term
    |z_e - sg(z_q)|^2.
    """

    config_class = VQLossConfig

    def check(self, model: Model) -> None:
        if not getattr(model.encoder, "quantizes", False):
            raise ConfigError(
                f"{self.label()} cannot work with {model.encoder.label()}: it needs a quantising encoder (--encoder vq)"
            )

    def forward(self, model: Model, batch: Batch) -> LossOutput:
        c = self.config
        posterior = model.encode(batch.x)
        logits = model.decode_logits(posterior.mean)
        reconstruction = reconstruction_nll(logits, batch.target, c)
        latent, quantized = posterior.latent.float(), posterior.quantized.float()
        terms = {
            "reconstruction": reconstruction,
            "commitment": c.commitment * (latent - quantized.detach()).pow(2).sum(1).mean(),
        }
        if not model.encoder.config.ema:
            terms["codebook"] = (latent.detach() - quantized).pow(2).sum(1).mean()
        return LossOutput(terms)


@dataclass
class CategoricalConfig(Config):
    codebook: int = option(256, "distinct code vectors it can hold (the vq encoder's codebook size)")
    code_dim: int = option(2, "numbers per position (the vq encoder's code_dim)")
    smoothing: float = option(0.01, "count added to every vector seen in training, at every position")

    positive: ClassVar[tuple[str, ...]] = ("codebook", "code_dim")
    non_negative: ClassVar[tuple[str, ...]] = ("smoothing",)


class CategoricalCodePrior(Prior):
    """Per-position categorical over quantised codes, fitted after training: p(z) = prod_p p_p(code at p).

    It learns the code vectors from the training codes themselves (at most ``codebook`` distinct ones), so it
    needs no access to the encoder. It has a probability mass (``log_mass``), not a density.
    """

    config_class = CategoricalConfig
    fitted_after_training = True
    has_density = False

    def __init__(self, config: CategoricalConfig | None = None, dims: ModelConfig | None = None, **options: Any):
        if config is None:
            config = CategoricalConfig.from_dict(options, owner="prior categorical")
        super().__init__(config, dims)
        if self.latent % config.code_dim:
            raise ConfigError(
                f"categorical prior: latent ({self.latent}) must be a multiple of code_dim ({config.code_dim})"
            )
        self.positions = self.latent // config.code_dim
        self.register_buffer("table", torch.zeros(config.codebook, config.code_dim))
        self.register_buffer("used", torch.zeros(config.codebook, dtype=torch.bool))  #: rows of table seen in fit
        #: log-probabilities per position (finite everywhere: entries of unused rows are never drawn or scored)
        self.register_buffer("logits", torch.zeros(self.positions, config.codebook))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def check(self, model: Model) -> None:
        encoder = model.encoder.config
        for key in ("codebook", "code_dim"):
            if hasattr(encoder, key) and getattr(encoder, key) != getattr(self.config, key):
                raise ConfigError(
                    f"{self.label()} and {model.encoder.label()} disagree on {key} "
                    f"({getattr(self.config, key)} vs {getattr(encoder, key)}): set both with --set {key}=N"
                )

    def _require_fitted(self) -> None:
        if not bool(self.fitted):
            name = self.name or "categorical"
            raise ConfigError(
                f"the {name} prior is not fitted: fit it to training codes first (genkit sample RUN --prior {name}, "
                f"or genkit.priors.fit_prior(model, '{name}', train_images))"
            )

    def _learn_table(self, codes: Tensor) -> Tensor:
        """Keep the distinct code vectors of ``codes`` (N, latent) as the table; their indices (N, positions)."""
        c = self.config
        vectors = codes.detach().reshape(-1, c.code_dim).float()
        table, inverse = torch.unique(vectors, dim=0, return_inverse=True)
        if len(table) > c.codebook:
            raise ConfigError(
                f"{self.label()}: the codes hold {len(table)} distinct vectors, more than codebook={c.codebook}: "
                "fit it to quantised codes (the vq encoder's)"
            )
        self.used.zero_()
        self.used[: len(table)] = True
        self.table.zero_()
        self.table[: len(table)] = table.to(self.table)
        return inverse.view(-1, self.positions)

    def _indices(self, z: Tensor) -> Tensor:
        """Table index of the nearest known code vector at each position of ``z`` (..., latent): (M, positions)."""
        flat = z.reshape(-1, self.config.code_dim).float()
        distance = torch.cdist(flat, self.table.float()).masked_fill(~self.used[None], torch.inf)
        return distance.argmin(1).view(-1, self.positions)

    def fit(self, codes: Tensor) -> None:
        c = self.config
        index = self._learn_table(codes)
        known = int(self.used.sum())
        counts = torch.zeros(self.positions, c.codebook, device=index.device)
        position = torch.arange(self.positions, device=index.device).expand_as(index)
        counts.index_put_((position, index), torch.ones_like(index, dtype=counts.dtype), accumulate=True)
        self.logits.zero_()
        self.logits[:, :known] = (counts[:, :known] + c.smoothing).log().log_softmax(1)
        self.fitted.fill_(True)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        self._require_fitted()
        probs = self.logits.exp() * self.used
        index = torch.multinomial(probs, n, replacement=True, generator=generator).T  # (n, positions)
        return self.table[index].reshape(n, self.latent)

    def log_prob(self, z: Tensor) -> Tensor:
        raise NotImplementedError("a categorical prior has a probability mass over codes, not a density: use log_mass")

    def log_mass(self, z: Tensor) -> Tensor:
        """log P(code) in nats of the nearest known code to each ``z`` (..., latent): the rate of the code."""
        self._require_fitted()
        index = self._indices(z)
        return self.logits.gather(1, index.T).T.sum(-1).view(z.shape[:-1])


#: fitting steps between two checks of the autoregressive prior's held-out NLL
CHECK_EVERY = 100


@dataclass
class AutoregressiveConfig(CategoricalConfig):
    width: int = option(128, "width of the causal transformer")
    layers: int = option(2, "transformer layers")
    heads: int = option(4, "attention heads (must divide width)")
    train_steps: int = option(3000, "Adam steps of fitting, at most")
    batch_size: int = option(256, "codes per fitting step")
    lr: float = option(1e-3, "Adam's learning rate (cosine-decayed over the fitting)")
    holdout: float = option(0.05, "share of the codes held out to tell when the fitting stops improving")
    patience: int = option(5, f"checks (one per {CHECK_EVERY} steps) without a lower held-out NLL before the fitting "
                              "stops early, keeping its best weights; 0: run every step")  # fmt: skip
    seed: int = option(0, "seed of the fitting and of the initial weights")

    positive: ClassVar[tuple[str, ...]] = (*CategoricalConfig.positive, "width", "layers", "heads", "train_steps",
                                           "batch_size", "lr")  # fmt: skip
    non_negative: ClassVar[tuple[str, ...]] = (*CategoricalConfig.non_negative, "holdout", "patience")

    def validate(self) -> None:
        super().validate()
        if self.width % self.heads:
            raise ConfigError(f"heads ({self.heads}) must divide width ({self.width})")
        if self.holdout >= 0.5:
            raise ConfigError(f"holdout ({self.holdout}) must be below 0.5: the rest of the codes fit the prior")


class AutoregressiveCodePrior(CategoricalCodePrior):
    """Autoregressive prior over quantised codes, fitted after training: p(z) = prod_p p(code at p | codes < p).

    A small causal transformer (as VQ-VAE's PixelCNN prior, over positions in order) predicts each position's
    code vector from the ones before it, so samples keep the dependencies between positions that the
    per-position ``categorical`` prior drops. Like ``categorical`` it has a probability mass, not a density.
    """

    config_class = AutoregressiveConfig

    def __init__(self, config: AutoregressiveConfig | None = None, dims: ModelConfig | None = None, **options: Any):
        if config is None:
            config = AutoregressiveConfig.from_dict(options, owner="prior autoregressive")
        super().__init__(config, dims)
        c = config
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(c.seed)  # the same initial network for the same seed
        # input at position p: the code before it (a learned start vector at p = 0) plus p's own embedding
        self.start = nn.Parameter(torch.zeros(c.width))
        self.embed = nn.Embedding(c.codebook, c.width)
        self.place = nn.Parameter(torch.randn(self.positions, c.width) * 0.02)
        layer = nn.TransformerEncoderLayer(c.width, c.heads, 4 * c.width, dropout=0.0, batch_first=True,
                                           norm_first=True)  # fmt: skip
        self.net = nn.TransformerEncoder(layer, c.layers, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(c.width), nn.Linear(c.width, c.codebook))
        torch.random.set_rng_state(generator_state)
        self.requires_grad_(False)  # fitted by `fit`, never by the model's optimizer
        self.register_buffer("causal", nn.Transformer.generate_square_subsequent_mask(self.positions))
        self.fit_steps = 0  #: the fitting steps the last ``fit`` ran (fewer than ``train_steps`` if it stopped early)

    def _logits(self, index: Tensor) -> Tensor:
        """log p(code at p | codes < p) for every p and every table row: (N, positions, codebook)."""
        before = torch.cat([self.start.expand(index.shape[0], 1, -1), self.embed(index[:, :-1])], dim=1)
        h = self.net(before + self.place, mask=self.causal, is_causal=True)
        return self.head(h).masked_fill(~self.used, -torch.inf).log_softmax(-1)

    def _nll(self, index: Tensor) -> Tensor:
        """Mean negative log-probability per position of the codes with table indices ``index`` (N, positions)."""
        return -self._logits(index).gather(2, index[..., None]).mean()

    def fit(self, codes: Tensor) -> None:
        """Learn the table of code vectors, then train the transformer on the training codes' indices.

        A share of the codes (``holdout``) is kept aside; the fitting stops once their NLL has not fallen for
        ``patience`` checks and keeps the weights of the best check, so it runs only as long as it helps.
        """
        c = self.config
        index = self._learn_table(codes.to(self.device))
        generator = torch.Generator(device=self.device).manual_seed(c.seed)
        held = int(len(index) * c.holdout) if c.patience else 0
        order = torch.randperm(len(index), generator=generator, device=self.device)
        index, valid = index[order[held:]], index[order[:held]]
        self.requires_grad_(True)
        self.train()
        optimizer = torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=c.lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, c.train_steps)
        best, best_state, since_best = torch.inf, None, 0
        bar = tqdm(range(1, c.train_steps + 1), desc="fitting autoregressive prior", leave=False, disable=None)
        for step in bar:
            batch = index[torch.randint(len(index), (c.batch_size,), generator=generator, device=self.device)]
            loss = self._nll(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            if held and step % CHECK_EVERY == 0:
                with torch.no_grad():  # in chunks: a large training set holds out many codes
                    nll = sum(self._nll(v).item() * len(v) for v in valid.split(4096)) / len(valid)
                bar.set_postfix(held_out_nll=f"{nll:.4f}")
                if nll < best:
                    best, since_best = nll, 0
                    best_state = {k: v.detach().clone() for k, v in self.state_dict().items()}
                elif (since_best := since_best + 1) >= c.patience:
                    break
        if best_state is not None:
            self.load_state_dict(best_state)
        self.fit_steps = step
        self.requires_grad_(False)
        self.eval()
        self.fitted.fill_(True)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        self._require_fitted()
        index = torch.zeros(n, self.positions, dtype=torch.long, device=self.device)
        for p in range(self.positions):  # position p depends only on the ones before it: fill them in order
            probs = self._logits(index)[:, p].exp()
            index[:, p] = torch.multinomial(probs, 1, generator=generator)[:, 0]
        return self.table[index].reshape(n, self.latent)

    def log_mass(self, z: Tensor) -> Tensor:
        self._require_fitted()
        index = self._indices(z)
        return self._logits(index).gather(2, index[..., None]).sum((1, 2)).view(z.shape[:-1])
