"""The pictures of a run: samples, latent space, reconstructions, denoising, interpolation, loss curves."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torchvision.utils import save_image

from genkit.config import LATENT_PLOTS
from genkit.data import ImageData
from genkit.errors import ConfigError
from genkit.files import atomic_write, image_format
from genkit.model import Model
from genkit.noise import NoiseTransform


def _pyplot() -> Any:
    """matplotlib's pyplot for files only (imported when first needed, which keeps other commands quick), pointed
    at a temporary config folder when its usual one cannot be written (an unwritable HOME), so that it prints no
    cache warning."""
    if not os.environ.get("MPLCONFIGDIR"):
        base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
        folder = os.path.join(base, "matplotlib")
        try:
            os.makedirs(folder, exist_ok=True)
            writable = os.access(folder, os.W_OK)
        except OSError:
            writable = False
        if not writable:
            os.environ["MPLCONFIGDIR"] = tempfile.mkdtemp(prefix="genkit-matplotlib-")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_figure(fig: Any, path: Path) -> None:
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format=image_format(path).lower()), parents=False)


def save_grid(images: torch.Tensor, path: Path, nrow: int = 8) -> None:
    """Images as one PNG/JPEG grid, written by write-then-rename (an existing file is never left half-written)."""
    grid = images.float().cpu()
    atomic_write(
        Path(path),
        lambda tmp: save_image(grid, tmp, nrow=nrow, padding=2, pad_value=0.5, format=image_format(path)),
        parents=False,
    )


@torch.no_grad()
def latent_codes(model: Model, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Posterior means of ``images``, computed in batches on the model's device."""
    device = model.device
    return torch.cat(
        [
            model.encode(images[i : i + batch_size].to(device)).mean.float().cpu()
            for i in range(0, len(images), batch_size)
        ]
    )


def project_2d(codes: torch.Tensor, method: str = "tsne") -> tuple[torch.Tensor, str]:
    """Codes as 2-D points, and the name of the axes: the codes themselves when 1- or 2-D; else a t-SNE
    embedding (scikit-learn), which keeps neighbours together so that classes separate as they do in the
    latent space, or ``method="pca"``: the first two principal components (linear, often one mixed blob)."""
    if method not in LATENT_PLOTS:
        raise ConfigError(f"unknown latent projection {method!r}: use {' or '.join(LATENT_PLOTS)}")
    if codes.shape[1] == 1:
        return torch.cat([codes, torch.zeros_like(codes)], 1), "z"
    # too few (distinct) codes to project: the first two coordinates. Identical codes (a collapsed or barely
    # trained model, integer codes all rounded to 0) make t-SNE's PCA start divide by zero and then crash
    if codes.shape[1] == 2 or codes.shape[0] < 4 or torch.unique(codes, dim=0).shape[0] < 4:
        return codes[:, :2], "z"
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = min(30.0, (codes.shape[0] - 1) / 3)
        embedded = TSNE(2, perplexity=perplexity, init="pca", random_state=0).fit_transform(codes.double().numpy())
        return torch.from_numpy(embedded).float(), "t-SNE "
    centred = codes - codes.mean(0)
    _, _, v = torch.pca_lowrank(centred, q=2, center=False)
    return centred @ v[:, :2], "PC"


#: the most samples one grid holds (100 x 100 images); more would be an image no viewer opens
MAX_SAMPLES = 10_000


@torch.no_grad()
def save_samples(model: Model, path: Path, n: int = 64, seed: int = 0, chunk: int = 500) -> None:
    """``n`` samples as a square-ish grid, decoded ``chunk`` at a time so that memory stays bounded."""
    if not 1 <= n <= MAX_SAMPLES:
        raise ConfigError(f"the number of samples must be between 1 and {MAX_SAMPLES}, got {n}")
    save_grid(draw_samples(model, n, seed, chunk), path, nrow=max(8, math.ceil(math.sqrt(n))))


@torch.no_grad()
def draw_samples(model: Model, n: int, seed: int = 0, chunk: int = 500) -> torch.Tensor:
    """``n`` samples from the model's prior (on the CPU), decoded ``chunk`` at a time so that memory stays bounded."""
    generator = torch.Generator(device=model.device).manual_seed(seed)
    return torch.cat([model.sample(min(chunk, n - i), generator).cpu() for i in range(0, n, chunk)])


def save_latent_plot(model: Model, data: ImageData, path: Path, n: int = 2000, method: str = "tsne") -> None:
    """The first ``n`` test codes coloured by label, projected to 2-D by ``method`` (see ``project_2d``)."""
    points, axis = project_2d(model.codes(data.images[:n]).cpu(), method)
    labels = data.labels[:n].cpu()
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 6), dpi=110)
    scatter = ax.scatter(points[:, 0], points[:, 1], c=labels, cmap="tab10", s=3, alpha=0.7)
    if data.classes:
        handles = [
            plt.Line2D([], [], marker="o", ls="", color=scatter.cmap(scatter.norm(i)), label=name)
            for i, name in enumerate(data.classes)
            if (labels == i).any()
        ]
        ax.legend(handles=handles, title="label", fontsize=8, loc="center left", bbox_to_anchor=(1, 0.5))
    what = {"z": "", "PC": "\nfirst two principal components (PCA)"}.get(
        axis, "\nt-SNE embedding (neighbours kept together; distances not to scale)"
    )
    ax.set(xlabel=f"{axis}1", ylabel=f"{axis}2", title=f"{model.name}: test-set latent codes{what}")
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)


def _labelled_rows(path: Path, rows: list[torch.Tensor], labels: list[str], title: str) -> None:
    """Equally long rows of images as one picture, each row named on its left, with a title above."""
    from torchvision.utils import make_grid

    grid = make_grid(torch.cat(rows).float().cpu().clamp(0, 1), nrow=rows[0].shape[0], padding=2, pad_value=0.5)
    plt = _pyplot()
    height, width = grid.shape[1:]
    fig, ax = plt.subplots(figsize=(2.2 + width / 60, 0.8 + height / 60), dpi=110)
    ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    row_height = height / len(rows)
    ax.set_yticks([row_height * (i + 0.5) for i in range(len(rows))], labels)
    ax.set_xticks([])
    ax.tick_params(length=0)
    ax.set_title(title, fontsize=9)
    for side in ax.spines.values():
        side.set_visible(False)
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)


@torch.no_grad()
def save_reconstructions(model: Model, images: torch.Tensor, path: Path, n: int = 16) -> None:
    x = images[:n].to(model.device)
    title = f"{model.name}: test images and their reconstructions (posterior mean)"
    _labelled_rows(path, [x, model.reconstruct(x)], ["test image", "reconstruction"], title)


@torch.no_grad()
def save_denoising(
    model: Model,
    images: torch.Tensor,
    noise: NoiseTransform,
    path: Path,
    n: int = 16,
    seed: int = 0,
    trained_on: str | None = None,
) -> None:
    """Clean, noisy and denoised rows; the title says whether the model was trained as a denoiser (``trained_on``
    names its training noise): one that was not has never seen such inputs, and its outputs show it (no bug)."""
    x = images[:n].to(model.device)
    noisy = noise(x, torch.Generator(device=model.device).manual_seed(seed))
    if trained_on:
        title = f"{model.name}, trained as a denoiser on {trained_on}: test images with {noise.spec} noise"
    else:
        title = (
            f"{model.name} was not trained as a denoiser (genkit run --noise SPEC trains one): "
            f"its outputs for {noise.spec} noise are not denoised images"
        )
    labels = ["clean", f"noisy ({noise.spec})", "model output"]
    _labelled_rows(path, [x, noisy, model.reconstruct(noisy)], labels, title)


@torch.no_grad()
def save_interpolation(model: Model, images: torch.Tensor, path: Path, steps: int = 10, pairs: int = 4) -> None:
    """Each row walks linearly in latent space between two test images (the ends are their reconstructions)."""
    rows = []
    for i in range(min(pairs, len(images) // 2)):
        ends = images[[2 * i, 2 * i + 1]].to(model.device)
        z = model.encode(ends).mean
        t = torch.linspace(0, 1, steps, device=z.device)[:, None]
        rows.append(torch.cat([ends[:1], model.decode((1 - t) * z[0] + t * z[1]), ends[1:]]))
    title = f"{model.name}: decoded walks in latent space between two test images (shown at both ends)"
    _labelled_rows(path, rows, [f"pair {i + 1}" for i in range(len(rows))], title)


def save_loss_curves(history: list[dict[str, Any]], path: Path) -> None:
    """One panel per loss term (the total first, then in the loss's own order), train and test per epoch."""
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in history]
    found = [k[len("train_") :] for r in history for k in r if k.startswith("train_") and k != "train_seconds"]
    terms = sorted(dict.fromkeys(found), key=lambda term: term != "loss")  # stable: "loss" (the total) first
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(terms), figsize=(4 * len(terms), 3.4), dpi=110, squeeze=False)
    for ax, term in zip(axes[0], terms, strict=True):
        for split, style in (("train", "-o"), ("test", "--s")):
            values = [r.get(f"{split}_{term}") for r in history]
            if any(v is not None for v in values):
                ax.plot(epochs, values, style, ms=3, label=split)
        name = "total loss" if term == "loss" else term
        ax.set(title=name, xlabel="epoch", ylabel=f"{name} per image")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)


def write_pictures(
    model: Model,
    test: ImageData,
    history: list[dict[str, Any]],
    noise: NoiseTransform,
    out: Path,
    trained_on: str | None = None,
    latent_plot: str = "tsne",
) -> list[Path]:
    """Write every picture of a run into ``out``; returns their paths. ``trained_on``: the training noise;
    ``latent_plot``: how codes of more than two dimensions are drawn (``LATENT_PLOTS``)."""
    model.eval()
    paths = {
        name: out / f"{name}.png"
        for name in ("samples", "latent", "reconstructions", "denoising", "interpolation", "loss")
    }
    save_samples(model, paths["samples"])
    save_latent_plot(model, test, paths["latent"], method=latent_plot)
    save_reconstructions(model, test.images, paths["reconstructions"])
    save_denoising(model, test.images, noise, paths["denoising"], trained_on=trained_on)
    if len(test) >= 2:
        save_interpolation(model, test.images, paths["interpolation"])
    else:
        paths.pop("interpolation")
    if history:
        save_loss_curves(history, paths["loss"])
    else:
        paths.pop("loss")
    return list(paths.values())
