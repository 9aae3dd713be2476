"""Real compression: images -> quantised latent codes -> bits, entropy-coded under a fitted code model.

The codes are turned into integer symbols, one per latent position: a ``vq`` encoder's codebook indices as they
are, a compressor's integer codes as they are, any other model's posterior means divided by a step (a multiple of
each dimension's spread over the training codes) and rounded. The code model holds, per position, integer counts
of the symbols: a compressor's are its trained entropy model's masses (``integer_masses``), the others' are
counts over the training codes (plus one). Encoder and decoder use exactly the same tables on any machine;
constriction's range coder (``Categorical(perfect=False)``) turns symbols into 32-bit words. A file holds::

    b"GKC\\0" | header length (u32) | header (JSON) | words (u32, little-endian)

The header names the format version, the coder, the sha256 of the model's weights and of the code model (a file
decoded with another model is refused), the image count and shape, and the sha256 of the words (a damaged file
is refused rather than decoded into wrong pictures).
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from genkit.errors import DataError
from genkit.model import Model

FORMAT_VERSION = 1
MAGIC = b"GKC\0"
CODER = "constriction range coder, Categorical(perfect=False)"
#: images encoded or decoded at once (memory stays bounded for any image count)
BATCH = 256


@dataclass
class CodeModel:
    """Per-position integer symbol counts: symbol s at position p stands for the integer s + offsets[p]."""

    kind: str  #: "vq" (codebook indices) or "scalar" (rounded codes)
    counts: Tensor  #: (positions, symbols) int64, >= 1 inside a position's range and 0 beyond it
    offsets: Tensor  #: (positions,) int64
    steps: Tensor  #: (positions,) float32 quantisation steps ("scalar"; ones for "vq")

    def probabilities(self) -> np.ndarray:
        counts = self.counts.double().numpy()
        return counts / counts.sum(1, keepdims=True)

    def bits(self, symbols: Tensor) -> float:
        """The ideal code length of ``symbols`` (N, positions) under these counts, in bits."""
        p = torch.from_numpy(self.probabilities())
        return float(-p.log2().gather(1, symbols.T.long()).sum())

    def tensors(self) -> dict[str, Tensor]:
        return {"counts": self.counts, "offsets": self.offsets, "steps": self.steps}


def _quantizes(model: Model) -> bool:
    return bool(getattr(model.encoder, "quantizes", False))


def prior_tables(model: Model) -> bool:
    """Whether the model's prior is an entropy model over integer codes (``integer_masses``, e.g. ``factorized``):
    its tables code the rounded codes as they are, with no step and no fitting to training codes."""
    return callable(getattr(model.prior, "integer_masses", None))


def integers(model: Model, images: Tensor, steps: Tensor | None) -> Tensor:
    """The integer code (N, positions) of ``images``: codebook indices, or means / steps rounded."""
    with torch.no_grad():
        posterior = model.encode(images.to(model.device))
    if _quantizes(model):
        return posterior.indices.cpu().long()
    assert steps is not None
    return torch.round(posterior.mean.float().cpu() / steps).long()


def codes_of(model: Model, values: Tensor, code_model: CodeModel) -> Tensor:
    """Latent codes for integer codes ``values`` (N, positions)."""
    if code_model.kind == "vq":
        return model.encoder.lookup(values.to(model.device))
    return (values.float() * code_model.steps).to(model.device)


def fit_code_model(model: Model, images: Tensor, step: float = 0.5, batch: int = 1000) -> CodeModel:
    """Count the training codes' symbols. ``step`` (not for vq) is in units of each dimension's standard deviation
    over the training codes: larger steps, fewer bits, coarser codes."""
    model.eval()
    if _quantizes(model):
        size = model.encoder.config.codebook
        values = torch.cat([integers(model, images[i : i + batch], None) for i in range(0, len(images), batch)])
        counts = torch.stack([torch.bincount(column, minlength=size) for column in values.T]) + 1
        positions = values.shape[1]
        return CodeModel("vq", counts, torch.zeros(positions, dtype=torch.long), torch.ones(positions))
    if prior_tables(model):
        offsets, counts = model.prior.integer_masses()
        return CodeModel("scalar", counts.cpu(), offsets.cpu(), torch.ones(len(offsets)))
    means = model.codes(images, batch)
    steps = (step * means.std(0)).clamp_min(1e-6).float().cpu()
    values = torch.round(means.cpu() / steps).long()
    # the range of each position: all but the rarest 0.01% on either side (those are clamped when coding)
    low = torch.quantile(values.double(), 1e-4, dim=0).floor().long()
    high = torch.quantile(values.double(), 1 - 1e-4, dim=0).ceil().long()
    width = int((high - low).max()) + 1
    counts = torch.zeros(values.shape[1], width, dtype=torch.long)
    for p, column in enumerate(values.T):
        inside = (column.clamp(low[p], high[p]) - low[p]).long()
        counts[p] = torch.bincount(inside, minlength=width)
        counts[p, : int(high[p] - low[p]) + 1] += 1
    return CodeModel("scalar", counts, low, steps)


def symbols(model: Model, images: Tensor, code_model: CodeModel) -> Tensor:
    """The symbols (N, positions) coded for ``images``: integer codes clamped to each position's range."""
    values = integers(model, images, code_model.steps if code_model.kind == "scalar" else None) - code_model.offsets
    highest = (code_model.counts > 0).sum(1) - 1
    return torch.minimum(values.clamp_min(0), highest)


def reconstruct(model: Model, symbol_batch: Tensor, code_model: CodeModel) -> Tensor:
    """The decoded images of ``symbol_batch`` (N, positions), in [0, 1]."""
    with torch.no_grad():
        return model.decode(codes_of(model, symbol_batch + code_model.offsets, code_model)).cpu()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def entropy_coder() -> Any:
    """constriction, or a one-line ``DataError`` saying how to install it."""
    try:
        import constriction
    except ImportError:
        raise DataError("compression needs constriction: pip install constriction") from None
    return constriction


class CodeWriter:
    """Codes images into one file a batch at a time, so memory holds one batch however many images there are."""

    def __init__(self, model: Model, code_model: CodeModel) -> None:
        constriction = entropy_coder()
        self.model, self.code_model = model, code_model
        self.family = constriction.stream.model.Categorical(perfect=False)
        self.probabilities = code_model.probabilities()
        self.encoder = constriction.stream.queue.RangeEncoder()
        self.count, self.shape, self.ideal_bits = 0, [0, 0, 0], 0.0

    def add(self, images: Tensor) -> Tensor:
        """Code ``images`` (N, C, H, W) and return their decoded images (what decompress will give)."""
        decoded = []
        for start in range(0, len(images), BATCH):
            batch = symbols(self.model, images[start : start + BATCH], self.code_model)
            table = np.tile(self.probabilities, (len(batch), 1))
            self.encoder.encode(batch.reshape(-1).numpy().astype(np.int32), self.family, table)
            self.ideal_bits += self.code_model.bits(batch)
            decoded.append(reconstruct(self.model, batch, self.code_model))
        self.count, self.shape = self.count + len(images), list(images.shape[1:])
        return torch.cat(decoded)

    def finish(self, model_sha: str, code_sha: str, step: float | None = None) -> bytes:
        """The file's bytes: the header (naming the model and code model by their sha256) and the words."""
        header = {
            "coder": CODER,
            "model_sha256": model_sha,
            "code_model_sha256": code_sha,
            "step": step if self.code_model.kind == "scalar" and not prior_tables(self.model) else None,
            "count": self.count,
            "shape": self.shape,
            "positions": self.code_model.counts.shape[0],
        }
        return pack(header, self.encoder.get_compressed())


def compress(
    model: Model, images: Tensor, code_model: CodeModel, model_sha: str, code_sha: str, step: float | None = None
) -> tuple[bytes, Tensor]:
    """The file's bytes for ``images`` and their decoded images (what decompress will give)."""
    writer = CodeWriter(model, code_model)
    decoded = writer.add(images)
    return writer.finish(model_sha, code_sha, step), decoded


def pack(header: dict, words: np.ndarray) -> bytes:
    """A file's bytes: ``header`` (with the format version and the words' checksum added) and the 32-bit words."""
    data = words.astype("<u4").tobytes()
    text = json.dumps({"format": FORMAT_VERSION, **header, "words_sha256": hashlib.sha256(data).hexdigest()})
    return MAGIC + struct.pack("<I", len(text.encode())) + text.encode() + data


def read_header(data: bytes, name: str) -> tuple[dict, bytes]:
    """The header and the coded words of a file's bytes; one-line ``DataError`` for anything else."""
    if not data:
        raise DataError(f"{name} is empty: not a genkit compressed file")
    if data[:4] != MAGIC or len(data) < 8:
        raise DataError(f"{name} is not a genkit compressed file (made by genkit compress)")
    (length,) = struct.unpack("<I", data[4:8])
    try:
        header = json.loads(data[8 : 8 + length])
        count, shape, version = int(header["count"]), header["shape"], header["format"]
    except (ValueError, KeyError, TypeError):
        raise DataError(f"{name} is damaged: its header cannot be read") from None
    if version != FORMAT_VERSION:
        raise DataError(f"{name} is format {version}; this genkit reads format {FORMAT_VERSION}: upgrade genkit")
    words = data[8 + length :]
    if len(words) % 4 or hashlib.sha256(words).hexdigest() != header.get("words_sha256"):
        raise DataError(f"{name} is damaged or truncated: its coded data does not match its checksum")
    if count < 1 or len(shape) != 3:
        raise DataError(f"{name} is damaged: it claims {count} images of shape {shape}")
    return header, words


def decompress(model: Model, data: bytes, code_model: CodeModel, name: str = "file") -> Iterator[Tensor]:
    """The images of a compressed file, a batch at a time (checked against ``model`` by the caller)."""
    constriction = entropy_coder()
    header, words = read_header(data, name)
    positions = code_model.counts.shape[0]
    if header.get("positions") != positions:
        raise DataError(f"{name} holds codes of {header.get('positions')} positions; this model has {positions}")
    family = constriction.stream.model.Categorical(perfect=False)
    probabilities = code_model.probabilities()
    decoder = constriction.stream.queue.RangeDecoder(np.frombuffer(words, dtype="<u4").astype(np.uint32))
    count = int(header["count"])
    for start in range(0, count, BATCH):
        n = min(BATCH, count - start)
        flat = decoder.decode(family, np.tile(probabilities, (n, 1)))
        yield reconstruct(model, torch.from_numpy(flat.astype(np.int64)).view(n, positions), code_model)


def bits_per_pixel(size: int, count: int, shape: tuple[int, ...]) -> float:
    """File bits per pixel position (channels counted once, as image codecs report it)."""
    return 8 * size / (count * math.prod(shape[1:]))


def code_model_path(run: Path, model: Model, step: float) -> Path:
    if _quantizes(model):
        return run / "code-model-vq.safetensors"
    if prior_tables(model):
        return run / "code-model-prior.safetensors"
    return run / f"code-model-step{step:g}.safetensors"


def run_code_model(
    run_dir: str | Path,
    model: Model,
    step: float = 0.5,
    data_dir: str | None = None,
    log: Callable[[str], None] = print,
) -> tuple[CodeModel, Path]:
    """The run's code model for ``step``, fitted to its training codes on first use and kept beside the run."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from genkit.files import atomic_write
    from genkit.run import training_images

    path = code_model_path(Path(run_dir), model, step)
    if path.is_file():
        try:
            with safe_open(str(path), "pt") as f:
                kind = (f.metadata() or {}).get("kind", "")
                return CodeModel(kind, f.get_tensor("counts"), f.get_tensor("offsets"), f.get_tensor("steps")), path
        except Exception as exc:  # a damaged cache is fitted again
            log(f"refitting the code model: {path} unusable ({type(exc).__name__})")
    if prior_tables(model):
        code_model = fit_code_model(model, torch.empty(0), step)
        how = f"took the code model from the run's {model.prior.label()}"
    else:
        images = training_images(run_dir, model, data_dir)
        code_model = fit_code_model(model, images, step)
        how = f"fitted the code model to {len(images)} training codes"
    metadata = {"kind": code_model.kind, "step": str(step)}
    atomic_write(path, lambda tmp: save_file(code_model.tensors(), str(tmp), metadata=metadata))
    log(f"{how}: {path}")
    return code_model, path
