"""A run's evaluation, figures, report page and DVC metrics files."""
