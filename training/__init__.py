"""Lemur's training recipe: tokenizer, pretraining, SFT and export."""
