"""Lemur's Triton kernels, each with its torch twin, and the vLLM plugin that
swaps them in (`lemur serve --kernels triton`). Installed as `lemur.kernels`:
the name `kernels` alone belongs to Hugging Face's package, which installs
beside ours (tests/unit/test_packaging.py)."""
