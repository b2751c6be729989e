"""The HTTP edge: OpenAI-compatible request and response models."""
