"""`python -m trace_rl.cli`: the `trace-rl` command line."""

import sys

from trace_rl.cli.main import main

sys.exit(main())
