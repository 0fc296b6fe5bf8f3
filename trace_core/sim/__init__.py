"""Simulated studies: a task with known success probabilities and the oracle study run on it."""
