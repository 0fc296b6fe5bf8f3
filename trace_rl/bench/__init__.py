"""The allocator benchmark (runner.py) and its summary (summary.py)."""
