"""simlab: a terminal lab for simulator-style prompting of local language models."""

__version__ = "0.1.0"
