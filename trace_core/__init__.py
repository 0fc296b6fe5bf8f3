"""trace_core: the TRACE method and its environments, free of orchestration and storage code."""
