"""The search-agent task family (Search-R1-style multi-hop QA): data files, the synthetic task, the
retrievers, the ReAct environment and its reward, the predictor's features, evaluation and the
supervised warm start."""
