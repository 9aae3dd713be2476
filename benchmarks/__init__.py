"""genkit's benchmark suites (run through nox: ``nox -s bench``, ``nox -s bench-quick``, ``nox -s speed``)."""
