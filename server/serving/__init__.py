"""The serving layer: OpenAI requests in, engine requests out, responses back."""
