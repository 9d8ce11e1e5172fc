"""The engine: sampling knobs (params), logits steps (logits), what a run yields (results), text
streaming and stops (textstream), the Engine Protocol (protocol), the local decode loop (local), an
OpenAI-compatible server (remote), and the factory that picks one (open)."""
