"""The agent table that ``ocs-agent-cli`` reads through the ``ocs.plugins`` entry point."""

package_name = "socs_agents"
agents = {
    "PysmurfMonitor": {"module": "socs_agents.agents.pysmurf_monitor.agent", "entry_point": "main"},
    "FileOrchestrator": {
        "module": "socs_agents.agents.file_orchestrator.agent",
        "entry_point": "main",
    },
    "VisibilityRecorder": {
        "module": "socs_agents.agents.visibility_recorder.agent",
        "entry_point": "main",
    },
    "VisibilityManager": {
        "module": "socs_agents.agents.visibility_manager.agent",
        "entry_point": "main",
    },
    "GWDataBuffer": {"module": "socs_agents.agents.gw_data_buffer.agent", "entry_point": "main"},
    "DAQWriter": {"module": "socs_agents.agents.daq_writer.agent", "entry_point": "main"},
}
