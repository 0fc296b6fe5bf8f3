"""Task families: each module here is one whole (its settings sections, data, tools, environment,
featurizer, scoring and warm-start turns), registered by name in `family.FAMILIES`."""
