"""The recipes as package data: ``importlib.resources.files("aot.recipes")`` (see pyproject.toml)."""
