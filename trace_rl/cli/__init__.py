"""The `trace-rl` command line (main.py)."""
