"""Generation backends behind one protocol (`backend.py`): Hugging Face transformers and vLLM, and the
batching helpers they and the loss share."""
