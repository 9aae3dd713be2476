"""genkit's built-in plugins. They use only genkit's public API and are registered through entry points
in genkit's own pyproject.toml, exactly as a third-party package registers its plugins."""
