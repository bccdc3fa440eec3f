"""One adapter module per system on the agent workload (``_workload``): ours and the peers' storage."""
