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
    """Install the example third-party plugin beside genkit and run genkit's conformance suite on it."""
    session.install(*CONSTRAINTS, "-e", ".[dev]")
    session.install("--no-build-isolation", "./plugins/example-mlp-vae")
    session.run("genkit", "list")
    session.run("pytest", "plugins/example-mlp-vae/tests", *session.posargs)
