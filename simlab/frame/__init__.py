"""The frame: how a path of turns becomes the exact text the model reads (framing, render), how much
of it fits the context (window), and how a sampled reply becomes a turn's text. Pure: no torch, no I/O."""
