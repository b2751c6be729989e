"""Custom Triton kernels for Lemur serving.

Kept free of imports and of a ``__version__``: transformers and vLLM probe for
Hugging Face's ``kernels`` package by import name, and this package must not
look like it (tests/test_packaging.py checks that transformers reports it
unavailable).
"""
