"""FileOrchestrator: the DUNE data-filter orchestrator as an OCS agent."""
