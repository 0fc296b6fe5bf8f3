"""flows: settings, the Prefect training flow, the store wiring and the `trace-rl` command line.

Prefect's defaults are set here, before any module imports Prefect: no analytics and no calls
beyond loopback, and a start-up timeout for the temporary API server above Prefect's 20 s, which
a loaded 2-core machine can exceed. Each can still be overridden from the environment.
"""

import logging
import os

for _key, _value in {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    # one line per task run would bury the training progress; states stay visible in the UI
    "PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL": "WARNING",
}.items():
    os.environ.setdefault(_key, _value)

# bm25s logs each index build at DEBUG, which Prefect's handlers would print among the progress lines
logging.getLogger("bm25s").setLevel(logging.INFO)
