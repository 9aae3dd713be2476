"""Scoreboard: every model of the full protocol beside its binarised-MNIST NLL, the published figures, and the
quality targets, each reported as met or missed. It trains nothing: it reads the quality suite's results.

    python -m benchmarks.scoreboard --dataset mnist --device cpu

reads ``<dataset>-<device>.json`` (protocol ``full``) and ``<dataset>-<device>-nll.json`` (protocol ``nll``), either
of which may be missing, and writes ``<dataset>-<device>-scoreboard.json`` and a markdown table beside them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.results_io import RESULTS, write_results
from benchmarks.suite import PROTOCOLS, own_prior_cell, own_prior_fid
from genkit.train import select_device

Row = dict[str, Any]

#: the papers the published figures come from
SOURCES = {
    "Ghosh": "Ghosh et al. 2020, From Variational to Deterministic Autoencoders, Table 1 (MNIST; FID from "
    "TensorFlow's Inception, 10-component GMM fitted to the training codes)",
    "Burda": "Burda et al. 2016, Importance Weighted Autoencoders, Table 1 (dynamically binarised MNIST, k=5000)",
    "Tomczak": "Tomczak & Welling 2018, VAE with a VampPrior, Table 2 (dynamically binarised MNIST, one layer)",
}

#: published figures per dataset and model kind: (what, value, source); FID "N(0,I)" is a VAE's samples from its
#: prior. Denoisers (rows trained on noise) get none.
ANCHORS: dict[str, dict[str, list[tuple[str, float, str]]]] = {
    "mnist": {
        "ae": [("FID gmm", 10.66, "Ghosh")],
        "vae-conv": [("FID N(0,I)", 19.21, "Ghosh"), ("FID gmm", 17.66, "Ghosh"), ("NLL", 86.76, "Burda")],
        "wae": [("FID gmm", 9.39, "Ghosh")],
        "rae": [("FID gmm", 8.69, "Ghosh")],  # genkit's rae is the paper's RAE-L2
        "rae-gp": [("FID gmm", 11.54, "Ghosh")],
        "iwae": [("NLL", 85.54, "Burda")],  # k=5, one stochastic layer, as genkit's iwae
        "vamp-vae": [("NLL", 85.57, "Tomczak")],
    }
}


def _fid(row: Row, prior: str) -> float | None:
    return own_prior_fid(row) if prior == "prior" else row["fid"].get(prior)


def _best(values: list[tuple[float, str]], lowest: bool) -> tuple[float, str] | None:
    return (min if lowest else max)(values, default=None)


def _ex_post_fid(rows: list[Row], nll: list[Row]) -> tuple[float, str] | None:
    return _best([(v, f"{r['label']}, {p}") for r in rows for p in ("gmm", "diffusion") if (v := _fid(r, p))], True)


def _vae_fid(rows: list[Row], nll: list[Row]) -> tuple[float, str] | None:
    return _best([(v, r["label"]) for r in rows if r["label"] == "vae-conv" and (v := _fid(r, "prior"))], True)


def _ae_mse(rows: list[Row], nll: list[Row]) -> tuple[float, str] | None:
    plain = [r for r in rows if r["model"] == "ae" and not r.get("train_noise") and "latent" not in r["options"]]
    return _best([(r["test_mse"], r["label"]) for r in plain], True)


def _denoiser_psnr(rows: list[Row], nll: list[Row]) -> tuple[float, str] | None:
    return _best([(r["psnr"]["gaussian:0.5"]["output"], r["label"]) for r in rows], False)


def _best_nll(rows: list[Row], nll: list[Row]) -> tuple[float, str] | None:
    return _best([(r["nll"]["nats"], r["label"]) for r in nll if r.get("nll")], True)


@dataclass(frozen=True)
class Target:
    """A goal for genkit's best model: met when the best measured figure is on the right side of ``limit``."""

    text: str
    limit: float
    lowest: bool  # lower is better
    measure: Callable[[list[Row], list[Row]], tuple[float, str] | None]
    digits: int = 1


#: the quality targets of MNIST (issue 15), never tuned on the test set: the rows are what the protocols measured
TARGETS = {
    "mnist": [
        Target("FID with an ex-post prior (gmm or diffusion) <= 8.0", 8.0, True, _ex_post_fid),
        Target("vae-conv FID from N(0,I) <= 15", 15.0, True, _vae_fid),
        Target("ae test MSE <= 0.004 at latent 16", 0.004, True, _ae_mse, 4),
        Target("denoiser PSNR at gaussian:0.5 >= 22 dB", 22.0, False, _denoiser_psnr),
        Target("test NLL on binarised MNIST <= 82.9 nats", 82.9, True, _best_nll, 2),
    ]
}


def _load(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise SystemExit(
            f"error: {path} does not exist: run python -m benchmarks.suite --protocol "
            f"{'nll' if path.stem.endswith('-nll') else 'full'} first, or pick its --dataset/--device"
        ) from None
    except ValueError as exc:
        raise SystemExit(f"error: {path} is not valid JSON ({exc}): run the suite again to rewrite it") from None


def scoreboard(full: dict[str, Any] | None, nll: dict[str, Any] | None, dataset: str) -> dict[str, Any]:
    """The scoreboard's record: a row per full-protocol entry (measured or not yet) and each target's verdict;
    ``full`` or ``nll`` (the two protocols' results) may be None, not both."""
    measured = {r["label"]: r for r in full["results"]} if full else {}
    nll_rows = nll["results"] if nll else []
    nll_by_label = {r["label"]: r for r in nll_rows}
    entries, nll_entries = (
        {e.label: {"model": e.model, "train_noise": e.noise} for e in PROTOCOLS[protocol].entries}
        for protocol in ("full", "nll")
    )
    anchors = ANCHORS.get(dataset, {})
    rows = []
    # the full protocol's entries, then rows of entries since dropped, then the nll protocol's own entries
    labels = [*entries, *(x for x in measured if x not in entries)]
    for label in [*labels, *(x for x in nll_entries if x not in labels)]:
        row = measured.get(label)
        entry = row or entries.get(label) or nll_entries[label]
        scored = nll_by_label.get(label, {}).get("nll") if label in nll_entries else None
        rows.append(
            {
                "label": label,
                "measured": row is not None,
                "test_mse": row and row["test_mse"],
                "fid": row and {p: v for p in ("prior", "gmm", "diffusion") if (v := _fid(row, p)) is not None},
                "own_prior": row and row.get("prior", "normal"),
                "psnr_gaussian_0.5": row and row["psnr"]["gaussian:0.5"]["output"],
                "nll": scored and {"nats": scored["nats"], "stderr": scored["stderr"]},
                "in_nll_protocol": label in nll_entries,
                "in_full_protocol": label in entries or row is not None,
                "published": [] if entry.get("train_noise") else anchors.get(entry["model"], []),
            }
        )
    targets = []
    for t in TARGETS.get(dataset, []):
        best = t.measure(list(measured.values()), nll_rows)
        met = best is not None and (best[0] <= t.limit if t.lowest else best[0] >= t.limit)
        targets.append({"target": t.text, "limit": t.limit, "measured": best and best[0], "row": best and best[1],
                        "met": met, "digits": t.digits})  # fmt: skip
    return {
        "dataset": dataset,
        "device": (full or nll)["device"],
        "full": full and {k: full[k] for k in ("protocol", "fid_protocol", "device_name", "torch", "genkit")},
        "nll_protocol": nll and nll["protocol"],
        "sources": SOURCES,
        "targets": targets,
        "rows": rows,
    }


def _cell(value: float | None, digits: int, measured: bool | None) -> str:
    """A figure; "—" where none is due (``measured`` None: not in the protocol); "not run" where one is due."""
    return f"{value:.{digits}f}" if value is not None else "—" if measured in (True, None) else "not run"


def markdown(record: dict[str, Any]) -> str:
    d, dev = record["dataset"], record["device"]
    k = record["nll_protocol"]["nll_samples"] if record["nll_protocol"] else PROTOCOLS["nll"].nll_samples
    lines = [
        f"# {d} — scoreboard ({dev})",
        "",
        f"Made by `python -m benchmarks.scoreboard --dataset {d} --device {dev}` from the rows of "
        f"`{d}-{dev}.md` (protocol `full`: test MSE, FIDs, PSNR) and `{d}-{dev}-nll.md` (protocol `nll`: the "
        "importance-sampled NLL on binarised images); each row of those tables names the command that made it. "
        "*not run*: the protocol has the entry but no row yet; —: the model has no such figure, or its entry is "
        "in the `nll` protocol only. Published "
        "figures were measured under the papers' own protocols and networks, so they are anchors, not ties.",
        "",
    ]
    if record["targets"]:
        lines += ["| target | best measured | row | verdict |", "|---|---|---|---|"]
        for t in record["targets"]:
            value = "no row yet" if t["measured"] is None else f"{t['measured']:.{t['digits']}f}"
            lines.append(f"| {t['target']} | {value} | {t['row'] or '—'} | {'met' if t['met'] else 'missed'} |")
        lines.append("")
    lines += [
        f"| model | test MSE | FID own prior | FID gmm | FID diffusion | PSNR gaussian:0.5 | NLL nats (K={k}) "
        "| published |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in record["rows"]:
        m, fid = (r["measured"] if r["in_full_protocol"] else None), r["fid"] or {}
        own = own_prior_cell({"fid": fid, "prior": r["own_prior"]}) if m else _cell(None, 1, m)
        nll = r["nll"]
        nll_cell = f"{nll['nats']:.2f} ± {nll['stderr']:.2f}" if nll else "not run" if r["in_nll_protocol"] else "—"
        published = "; ".join(f"{what} {value:g} ({source})" for what, value, source in r["published"]) or "—"
        lines.append(
            f"| {r['label']} | {_cell(r['test_mse'], 4, m)} | {own} | {_cell(fid.get('gmm'), 1, m)} "
            f"| {_cell(fid.get('diffusion'), 1, m)} | {_cell(r['psnr_gaussian_0.5'], 1, m)} | {nll_cell} "
            f"| {published} |"
        )
    lines += ["", "Sources: " + "; ".join(f"{key}: {text}" for key, text in record["sources"].items()) + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist"])
    parser.add_argument(
        "--device", default="auto", help="device kind of the results to read (cpu, cuda; auto: as the suite's)"
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of the suite's results")
    args = parser.parse_args(argv)
    # a file made elsewhere is read as well here: only "auto" looks at this machine's devices
    stem = f"{args.dataset}-{select_device().type if args.device == 'auto' else args.device}"
    full_path, nll_path = args.results / f"{stem}.json", args.results / f"{stem}-nll.json"
    nll = _load(nll_path) if nll_path.exists() else None
    full = _load(full_path) if full_path.exists() or nll is None else None  # nll rows alone: the rest "not run"
    record = scoreboard(full, nll, args.dataset)
    write_results(args.results / f"{stem}-scoreboard.json", record, markdown(record))


if __name__ == "__main__":
    sys.exit(main())
