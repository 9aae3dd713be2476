"""nox sessions: tests, lint, plugins (the example third-party plugin), and the benchmarks."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "tests", "plugins"]
CONSTRAINTS = ("-c", "constraints.txt")


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite (set GENKIT_DATA_DIR and TORCH_HOME as .ci/run does for the data-backed tests)."""
    session.install(*CONSTRAINTS, "-e", ".[dev]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint and formatting."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def plugins(session: nox.Session) -> None:
    """Install the example third-party plugins beside genkit and run genkit's conformance suites on them."""
    session.install(*CONSTRAINTS, "-e", ".[dev]")
    session.install("--no-build-isolation", "./plugins/example-mlp-vae", "./plugins/example-parts")
    session.run("genkit", "list")
    session.run("pytest", "plugins/example-mlp-vae/tests", "plugins/example-parts/tests", *session.posargs)


def _bench(session: nox.Session, protocol: str, datasets: list[str]) -> None:
    session.install(*CONSTRAINTS, "-e", ".")
    for dataset in session.posargs or datasets:
        session.run("python", "-m", "benchmarks.suite", "--protocol", protocol, "--dataset", dataset)
        if protocol in ("full", "nll"):  # the scoreboard reads both protocols' rows (either may be missing)
            session.run("python", "-m", "benchmarks.scoreboard", "--dataset", dataset)


@nox.session
def bench(session: nox.Session) -> None:
    """Full quality protocol (latent 16, 30 epochs, 10 000-sample FID) on MNIST and Fashion-MNIST: for a GPU."""
    _bench(session, "full", ["mnist", "fashion-mnist"])


@nox.session(name="bench-quick")
def bench_quick(session: nox.Session) -> None:
    """Small protocol that finishes on a 2-core CPU in a few minutes (MNIST unless datasets are given)."""
    _bench(session, "quick", ["mnist"])


@nox.session(name="bench-nll")
def bench_nll(session: nox.Session) -> None:
    """Binarised MNIST, the likelihood literature's protocol: test NLL in nats (K=1000) for the VAEs."""
    _bench(session, "nll", ["mnist"])


@nox.session
def rd(session: nox.Session) -> None:
    """Rate–distortion: genkit compress against PNG, WebP, JPEG, AVIF and gzip/bz2 (MNIST and Fashion-MNIST)."""
    session.install(*CONSTRAINTS, "-e", ".")
    for dataset in session.posargs or ["mnist", "fashion-mnist"]:
        session.run("python", "-m", "benchmarks.rd", "--dataset", dataset)


@nox.session
def speed(session: nox.Session) -> None:
    """Training speed: a plain DataLoader loop against genkit's trainer (pass --device cuda on a GPU)."""
    session.install(*CONSTRAINTS, "-e", ".")
    session.run("python", "-m", "benchmarks.speed", *session.posargs)


@nox.session
def scaling(session: nox.Session) -> None:
    """DDP scaling efficiency, 1 vs N processes (default: 2 processes on the CPU)."""
    session.install(*CONSTRAINTS, "-e", ".")
    session.run("python", "-m", "benchmarks.scaling", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """Build the docs with `mkdocs build --strict` (warnings are errors) and run every example in them."""
    session.install(*CONSTRAINTS, "-e", ".[docs,dev]")
    session.run("mkdocs", "build", "--strict", "--site-dir", f"{session.create_tmp()}/site")
    session.run("pytest", "tests/test_docs.py", "tests/test_external_project.py", *session.posargs)


@nox.session(name="bench-defaults")
def bench_defaults(session: nox.Session) -> None:
    """Training defaults: lr and schedule candidates scored on held-out training images (never the test split)."""
    session.install(*CONSTRAINTS, "-e", ".")
    session.run("python", "-m", "benchmarks.defaults", *session.posargs)


@nox.session(name="bench-priors")
def bench_priors(session: nox.Session) -> None:
    """Ex-post priors: GMM and diffusion settings scored by FID on held-out training images (not the test split)."""
    session.install(*CONSTRAINTS, "-e", ".")
    session.run("python", "-m", "benchmarks.priors", *session.posargs)


@nox.session(name="bench-likelihood")
def bench_likelihood(session: nox.Session) -> None:
    """ae reconstruction likelihoods scored by held-out reconstruction MSE (never the test split)."""
    session.install(*CONSTRAINTS, "-e", ".")
    session.run("python", "-m", "benchmarks.likelihood", *session.posargs)


@nox.session(name="bench-denoiser")
def bench_denoiser(session: nox.Session) -> None:
    """Denoisers: autoencoder architectures scored by PSNR on noisy held-out training images (never the test split)."""
    session.install(*CONSTRAINTS, "-e", ".")
    session.run("python", "-m", "benchmarks.denoiser", *session.posargs)
