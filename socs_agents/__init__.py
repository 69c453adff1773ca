"""socs-agents: OCS agents for the files that detectors and pipelines produce."""

__version__ = "0.1.0"
