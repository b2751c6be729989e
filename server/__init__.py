"""Lemur Serve: an OpenAI-compatible gateway in front of a vLLM engine."""

__version__ = "0.1.0"
