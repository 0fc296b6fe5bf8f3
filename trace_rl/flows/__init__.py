"""The Prefect training flow (training.py), its stages and what they share."""
