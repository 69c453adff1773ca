project = "socs-agents"
author = "socs-agents developers"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinxarg.ext"]
exclude_patterns = ["_build"]
html_theme = "alabaster"
autodoc_mock_imports = []
autodoc_typehints = "none"
nitpicky = False
