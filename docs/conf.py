"""Sphinx configuration: the Read the Docs theme, as the ocs and socs docs use."""

import datetime
from importlib.metadata import version as _installed_version

project = "socs-agents"
author = "socs-agents developers"
copyright = f"2026-{datetime.date.today().year}, {author}"  # noqa: A001 (Sphinx's name)
release = _installed_version("socs-agents")
version = ".".join(release.split(".")[:2])
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinxarg.ext"]
exclude_patterns = ["_build"]
html_theme = "sphinx_rtd_theme"
html_title = f"socs-agents {release}"
autodoc_mock_imports = []
autodoc_typehints = "none"
nitpicky = False
