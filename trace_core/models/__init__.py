"""Models the project builds itself (no model hub here): the embedded default policy."""
