"""The rollout store: every run, tree, node, reward, allocation and prediction in SQL."""
