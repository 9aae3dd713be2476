"""Quality benchmark: train each chosen model under one fixed protocol and score it.

    python -m benchmarks.suite --protocol full  --dataset mnist          # meant for a GPU
    python -m benchmarks.suite --protocol quick --dataset mnist          # a few minutes on a 2-core CPU
    python -m benchmarks.suite --protocol nll   --dataset mnist          # binarised MNIST: the NLL literature's

Scores: test reconstruction MSE (posterior mean, whole test split), denoising PSNR for the noisy input
and the model's output per noise type and level, sample FID (pytorch-fid InceptionV3) with the N(0, I)
prior and with priors fitted to the training codes (GMM, diffusion), the importance-sampled test NLL, wall
time and images/s. Results go to
``benchmarks/results/<dataset>-<device>[-<protocol>].json`` and a markdown table beside it.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

import genkit
from benchmarks.results_io import RESULTS, machine, machines, plural, provenance, read_record, write_results
from genkit import fid
from genkit.checkpoint import load_checkpoint, save_checkpoint
from genkit.data import ImageData, binarize, load_dataset
from genkit.errors import ConfigError, GenkitError
from genkit.evaluate import estimate_nll, nll_unavailable
from genkit.files import cache_root
from genkit.priors import fit_prior
from genkit.report import draw_samples
from genkit.train import Callback, TrainConfig, Trainer

DENOISING = ("gaussian:0.3", "gaussian:0.5", "gaussian:0.7", "salt-pepper:0.1", "salt-pepper:0.3", "masking:0.5")


@dataclass
class Entry:
    """One row of the table: a registered model, its options, and the noise it is trained with (if any)."""

    model: str
    options: dict[str, Any] = field(default_factory=dict)  # may set its own latent
    noise: str | None = None
    #: False for a denoiser whose code is not meant for sampling: no FID columns (— in the table)
    sample: bool = True

    @property
    def label(self) -> str:
        extra = "".join(f" {k}={v}" for k, v in self.options.items())
        return f"{self.model}{extra}" + (f" (trained on {self.noise})" if self.noise else "")


@dataclass
class Protocol:
    """Everything that fixes a benchmark's numbers."""

    name: str
    dataset: str = "mnist"
    latent: int = 16
    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    lr_schedule: str = "constant"
    lr_warmup: int = 0
    seed: int = 0
    fid_samples: int = 10_000
    train_limit: int | None = None
    test_limit: int | None = None
    gmm_components: int = 10
    #: priors fitted to the training codes after training, each scored by FID beside the model's own
    ex_post: tuple[str, ...] = ("gmm", "diffusion")
    #: importance samples per test image for the NLL column (0: no column)
    nll_samples: int = 0
    #: train on dynamically binarised images (the NLL literature's MNIST protocol)
    binarize: bool = False
    entries: list[Entry] = field(default_factory=list)


#: what protocol fields added later mean for result files written before them
LATER_FIELDS = {"ex_post": ["gmm"], "nll_samples": 0, "binarize": False}
#: fields that only add or drop table columns: earlier rows stay, with "—" in a column they lack
COLUMNS_ONLY = ("ex_post",)


#: the conv nets with an extra 3x3 convolution at each resolution, 1.5x the channels and a 2x wider dense layer
DEEPER = {"blocks": 1, "channels": 48, "hidden": 512}
#: larger still: on the CPU the deeper ae still underfits (train and test loss within 3% after 30 epochs)
WIDER = {"blocks": 2, "channels": 64, "hidden": 512}
FCN_DENOISER = {"encoder": "fcn", "decoder": "fcn", "latent": 392}

PROTOCOLS = {
    "full": Protocol(
        "full",
        lr=2e-3,
        lr_schedule="cosine",
        lr_warmup=1,  # without it the wider nets collapse to the mean image at lr 2e-3
        entries=[
            Entry("ae"),
            Entry("ae", DEEPER),
            Entry("ae", WIDER),
            Entry("vae-conv"),
            Entry("vae-conv", DEEPER),
            Entry("beta-vae", {"beta": 2.0}),
            Entry("wae"),
            Entry("vamp-vae"),
            Entry("iwae"),
            Entry("rae"),
            Entry("rae", DEEPER),
            Entry("rae-gp"),
            Entry("info-vae"),
            Entry("beta-tcvae"),
            Entry("aae"),
            Entry("vq-vae"),
            Entry("ae", noise="gaussian:0.5"),
            Entry("ae", DEEPER, noise="gaussian:0.5"),
            Entry("ae", WIDER, noise="gaussian:0.5"),
            Entry("vae-conv", noise="gaussian:0.5"),
            # a denoiser need not squeeze the image into 16 numbers: a 7x7x8 code grid, fully convolutional
            Entry("ae", FCN_DENOISER, noise="gaussian:0.5", sample=False),
            # deeper: on held-out images 0.03 dB below the best of benchmarks.denoiser (a deeper 14x14x4 grid) at
            # half its training time (benchmarks/results/denoiser-mnist-cpu.md)
            Entry("ae", {**FCN_DENOISER, "blocks": 1, "channels": 48}, noise="gaussian:0.5", sample=False),
        ],
    ),
    # the likelihood literature's MNIST protocol: dynamically binarised training images, the test images binarised
    # once; the NLL with K=1000 importance samples on the first 1000 test images (the papers take K=5000 on all
    # 10 000: ~3 h of decoding per model on a 2-core CPU), FID on 1000 samples only
    "nll": Protocol(
        "nll",
        lr=2e-3,
        lr_schedule="cosine",
        lr_warmup=1,
        binarize=True,
        test_limit=1000,
        fid_samples=1000,
        ex_post=(),
        nll_samples=1000,
        entries=[
            Entry("vae-conv"),
            Entry("vamp-vae"),
            Entry("beta-tcvae"),
            Entry("info-vae"),
            Entry("iwae"),
            # the two best rows' ideas composed: the 5-sample bound (a loss) with the VampPrior (a prior)
            Entry("iwae", {"prior": "vamp"}),
        ],
    ),
    "quick": Protocol(
        "quick",
        epochs=3,
        train_limit=10_000,
        test_limit=1000,
        fid_samples=200,
        nll_samples=100,
        entries=[
            Entry("ae"),
            Entry("vae-conv"),
            Entry("ae", noise="gaussian:0.5"),
            Entry("iwae"),
            Entry("wae"),
            Entry("vamp-vae"),
            Entry("rae"),
            Entry("rae-gp"),
            Entry("info-vae"),
            Entry("beta-tcvae"),
            Entry("aae"),
            Entry("vq-vae"),
        ],
    ),
}


def score(
    trainer: Trainer,
    train: ImageData,
    test: ImageData,
    protocol: Protocol,
    reference: tuple | None,
    sample: bool = True,
    done: dict[str, Any] | None = None,
    checkpoint: Callable[[dict[str, Any]], None] = lambda scores: None,
) -> dict[str, Any]:
    """MSE, denoising PSNR (through the trainer's own evaluation) and FID (the model's own prior and the ex-post
    ones; none unless ``sample``). Scores already in ``done`` (a resumed row's) are kept, and ``checkpoint`` gets
    the scores so far after each new one."""
    model, device = trainer.model, trainer.device
    result: dict[str, Any] = {"prior": model.prior.name, "fid": {}, **(done or {})}
    if "psnr" not in result:
        result["psnr"] = {}
        for spec in DENOISING:
            scores = trainer.evaluate(test, genkit.get_noise(spec))
            result["test_mse"] = scores["mse"]  # the same for every noise: reconstructions of the clean images
            result["psnr"][spec] = {"noisy": scores["psnr_noisy"], "output": scores["psnr_denoised"]}
        checkpoint(result)
    if protocol.nll_samples and "nll" not in result:
        reason = nll_unavailable(model)
        # a model trained on binary images is scored on one fixed binarisation, as the trainer's evaluation does
        images = binarize(test.images, protocol.seed) if protocol.binarize else test.images
        result["nll"] = None if reason else asdict(estimate_nll(model, images, protocol.nll_samples))
        checkpoint(result)
    own = model.prior
    for prior in ("prior", *protocol.ex_post) if sample else ():
        if prior in result["fid"]:
            continue
        if prior != "prior":
            options = {"components": protocol.gmm_components} if prior == "gmm" else {}
            if _same_prior(own, prior, options):  # rae's own prior is this one, fitted alike: same samples
                result["fid"][prior] = result["fid"]["prior"]
                continue
            fit_prior(model, prior, train.images, **options)  # seeded: a resumed row fits the same prior
        samples = draw_samples(model, protocol.fid_samples, seed=protocol.seed, chunk=1000)  # as rows before 0.3
        mu, sigma = fid.feature_statistics(samples, device=device, progress=sys.stderr.isatty())
        result["fid"][prior] = fid.frechet_distance(mu, sigma, *reference)
        checkpoint(result)
    return result


def _same_prior(prior: genkit.Prior, name: str, options: dict[str, Any]) -> bool:
    """Whether ``fit_prior(model, name, **options)`` would fit the model's own (ex-post) prior over again."""
    return prior.name == name and prior.fitted_after_training and replace(prior.config, **options) == prior.config


def run(protocol: Protocol, device: torch.device, out: Path) -> dict[str, Any]:
    train, test = load_dataset(protocol.dataset)
    train, test = train.subset(protocol.train_limit), test.subset(protocol.test_limit)
    n_ref = min(len(test), protocol.fid_samples)
    key = f"{protocol.dataset}-test-{n_ref}"
    reference = (  # ten minutes on a CPU the first time: not for rows that draw no samples (denoisers)
        fid.reference_statistics(key, test.images[:n_ref], device=device, progress=sys.stderr.isatty())
        if any(e.sample for e in protocol.entries)
        else None
    )
    settings = json.loads(json.dumps({k: v for k, v in asdict(protocol).items() if k != "entries"}))  # as saved
    record = {
        "protocol": settings,
        "fid_protocol": fid.protocol()
        | {"samples": protocol.fid_samples, "reference": f"{key} (first {n_ref} test images)"},
        **provenance(device),
        "results": _earlier_rows(out, settings, str(device)),
    }
    for entry in protocol.entries:
        print(f"== {entry.label}", flush=True)
        torch.manual_seed(protocol.seed)
        model = genkit.get_model(entry.model, **{"latent": protocol.latent, **entry.options})
        config = TrainConfig(
            epochs=protocol.epochs,
            batch_size=protocol.batch_size,
            lr=protocol.lr,
            lr_schedule=protocol.lr_schedule,
            lr_warmup=protocol.lr_warmup,
            seed=protocol.seed,
            device=str(device),
            binarize=protocol.binarize,
            channels_last=True,  # as the earlier rows trained (it was the default before genkit 0.2)
            progress=sys.stderr.isatty(),
        )
        trainer = Trainer(model, config, noise=genkit.get_noise(entry.noise) if entry.noise else None)
        row_state = PartialRow(out, entry, {"protocol": settings, "device": str(device), "commit": record["commit"]})
        state = row_state.load()
        wall, scores, resumed = 0.0, None, None
        if state is not None:
            trainer.load_state_dict(state)
            wall, scores = state["wall"], state["scores"]
            resumed = f"epoch {trainer.epoch}" if scores is None else f"scoring ({_scored(scores)} done)"
            print(f"   resumed at {resumed} from {row_state.path}", flush=True)
        if scores is None:
            started = time.perf_counter()
            trainer.callbacks.append(_SaveEachEpoch(row_state, wall - started))
            trainer.fit(train)
            if model.prior.fitted_after_training:  # the own prior is ex-post (rae: gmm): fitted as genkit run does
                model.prior.fit(model.codes(train.images))
            wall += time.perf_counter() - started
            scores = {}
            # the trained state, kept before scoring installs the ex-post priors, is what a resume starts from
            state = trainer.state_dict()
            row_state.save(state, wall, scores)
        checkpoint = functools.partial(row_state.save, state, wall)
        scores = score(trainer, train, test, protocol, reference, entry.sample, scores, checkpoint)
        history = trainer.history
        row = {
            "label": entry.label,
            "model": entry.model,
            "options": entry.options,
            "train_noise": entry.noise,
            "device_name": record["device_name"],
            "genkit": record["genkit"],
            "commit": record["commit"],  # rows of one file may come from different checkouts
            "wall_seconds": wall,
            "images_per_second": len(train) * len(history) / sum(r["train_seconds"] for r in history),
            **scores,
        }
        if resumed:
            row["resumed_at"] = resumed  # wall s and img/s count the finished epochs of every attempt once
        print(json.dumps(row), flush=True)
        record["results"] = [r for r in record["results"] if r["label"] != row["label"]] + [row]
        # written after every model, so that a run cut short still leaves the rows it finished
        write_results(out, record, markdown(record))
        row_state.remove()
    return record


class PartialRow:
    """A row's progress, kept in genkit's cache so that a run cut short (a lost session, a killed job) resumes
    the row where it stopped: the training state after each epoch, then the scores as they are made.

    A file belongs to one protocol, device and commit (its ``stamp``); since every epoch and every score is
    seeded, a resumed row gets the numbers an uninterrupted one would.
    """

    def __init__(self, out: Path, entry: Entry, stamp: dict[str, Any]) -> None:
        name = re.sub(r"[^A-Za-z0-9._=-]+", "_", entry.label).strip("._")
        self.path = cache_root() / "benchmark-rows" / out.stem / f"{name}.pt"
        self.stamp = stamp

    def load(self) -> dict[str, Any] | None:
        """The saved state, None if there is none; one of other code or settings is a ``ConfigError``."""
        if not self.path.exists():
            return None
        state = load_checkpoint(self.path)
        theirs = state.get("stamp", {})
        if theirs != self.stamp:
            what = f"commit {theirs.get('commit')}" if theirs.get("commit") != self.stamp["commit"] else "settings"
            raise ConfigError(
                f"{self.path} holds this row half done with other {what}; run the suite from that checkout to "
                "finish it, or delete the file to start the row again"
            )
        return state

    def save(self, trainer_state: dict[str, Any], wall: float, scores: dict[str, Any] | None) -> None:
        """Write the trainer's state with the training wall time so far and the scores made (None: training)."""
        save_checkpoint(self.path, {**trainer_state, "stamp": self.stamp, "wall": wall, "scores": scores})

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


class _SaveEachEpoch(Callback):
    """Saves the row's training state after every epoch; ``offset + perf_counter()`` is its wall time so far."""

    def __init__(self, partial: PartialRow, offset: float) -> None:
        self.partial, self.offset = partial, offset

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        self.partial.save(trainer.state_dict(), self.offset + time.perf_counter(), None)


def _scored(scores: dict[str, Any]) -> str:
    """What a resumed row has scored already, in words: ``"PSNR, FID prior"``, or ``"nothing"``."""
    done = ["PSNR"] * ("psnr" in scores) + ["NLL"] * ("nll" in scores)
    return ", ".join(done + [f"FID {prior}" for prior in scores.get("fid", {})]) or "nothing"


def _earlier_rows(out: Path, settings: dict[str, Any], device: str) -> list[dict[str, Any]]:
    """Rows of an earlier run of the same protocol on the same device kind, so that runs of some rows add up."""
    earlier = read_record(out)
    if earlier is None:
        return []

    def fixed(protocol: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in protocol.items() if k not in COLUMNS_ONLY}

    same = fixed({**LATER_FIELDS, **earlier.get("protocol", {})}) == fixed(settings) and earlier.get("device") == device
    if not same:
        return []
    # rows from before rows named their machine ran on the one the earlier file names
    return [{"device_name": earlier.get("device_name"), **row} for row in earlier.get("results", [])]


def warmup_text(epochs: int) -> str:
    """How a protocol's lr warm-up reads in a table: ``", warm-up 1 epoch"``, or nothing without one."""
    return f", warm-up {plural(epochs, 'epoch')}" if epochs else ""


def markdown(record: dict[str, Any]) -> str:
    p = record["protocol"]

    names = machines(record)  # rows added by later runs may come from another machine of the same kind
    ex_post = p.get("ex_post", LATER_FIELDS["ex_post"])
    nll = bool(p.get("nll_samples"))
    several = len(names) > 1
    lines = [
        f"# {p['dataset']} — protocol `{p['name']}` on {' and '.join(names)} ({record['device']})",
        "",
        f"latent {p['latent']}, {p['epochs']} epochs, batch {p['batch_size']}, Adam lr {p['lr']} "
        f"({p.get('lr_schedule', 'constant')}{warmup_text(p.get('lr_warmup', 0))}), seed {p['seed']}, "
        f"train images {p['train_limit'] or 'all'}{' (dynamically binarised)' * bool(p.get('binarize'))}, "
        f"test images {p['test_limit'] or 'all'}; "
        f"FID: {record['fid_protocol']['samples']} samples vs {record['fid_protocol']['reference']}, "
        f"{record['fid_protocol']['implementation']}; FID prior: samples from the model's own prior (N(0,I) "
        "unless the cell names another); NLL: importance-sampled -log p(x) per test image with its standard error "
        "(models whose encoder gives point codes have none); PSNR in dB (noisy input → model output).",
        "",
        f"Each row is made by `python -m benchmarks.suite --protocol {p['name']} --dataset {p['dataset']} --device "
        f'{record["device"]} --labels "MODEL"`, MODEL being the row\'s model cell; a column added after a row was '
        "made shows — for it.",
        "",
        "| model | test MSE | FID prior | "
        + "".join(f"FID {prior} | " for prior in ex_post)
        + (f"NLL nats (K={p['nll_samples']}) | " if nll else "")
        + " | ".join(f"PSNR {s}" for s in DENOISING)
        + " | img/s | wall s |"
        + " machine |" * several,
        "|---" * (5 + len(ex_post) + nll + several + len(DENOISING)) + "|",
    ]
    for r in record["results"]:
        psnr = " | ".join(f"{r['psnr'][s]['noisy']:.1f} → {r['psnr'][s]['output']:.1f}" for s in DENOISING)
        fids = "".join(f"{r['fid'][prior]:.1f} | " if prior in r["fid"] else "— | " for prior in ex_post)
        found = r.get("nll")
        nlls = (f"{found['nats']:.2f} ± {found['stderr']:.2f} | " if found else "— | ") if nll else ""
        lines.append(
            f"| {r['label']} | {r['test_mse']:.4f} | {own_prior_cell(r)} | {fids}{nlls}{psnr} "
            f"| {r['images_per_second']:.0f} | {r['wall_seconds']:.0f} |" + f" {machine(record, r)} |" * several
        )
    return "\n".join(lines) + "\n"


def own_prior_fid(row: dict[str, Any]) -> float | None:
    """FID of samples from a result row's own prior (rows before genkit 0.2 call it "normal"); None without one."""
    return row["fid"].get("prior", row["fid"].get("normal"))


def own_prior_cell(row: dict[str, Any]) -> str:
    """The own prior's FID as a table cell, naming the prior unless it is N(0, I)."""
    value = own_prior_fid(row)
    if value is None:
        return "—"
    name = row.get("prior") or "normal"
    return f"{value:.1f}" + (f" ({name})" if name != "normal" else "")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="quick")
    parser.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--models", help="comma-separated subset of the protocol's model names")
    parser.add_argument("--labels", help="comma-separated subset of the protocol's rows, by their exact label")
    args = parser.parse_args(argv)
    protocol = PROTOCOLS[args.protocol]
    protocol.dataset = args.dataset
    if args.models:
        wanted = set(args.models.split(","))
        protocol.entries = [e for e in protocol.entries if e.model in wanted]
    if args.labels:
        labels = set(args.labels.split(","))
        protocol.entries = [e for e in protocol.entries if e.label in labels]
    if not protocol.entries:
        parser.error("no entry of the protocol is left after --models/--labels")
    from genkit.train import select_device

    device = select_device(args.device)
    suffix = "" if protocol.name == "full" else f"-{protocol.name}"
    try:
        run(protocol, device, RESULTS / f"{args.dataset}-{device.type}{suffix}.json")
    except GenkitError as exc:  # bad data, a stale or corrupt partial row: one line, the finished rows are written
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()
