"""`lemur bench`: a load tester for any OpenAI-compatible endpoint."""
