"""The chat REPL: `chat` (state and actions), `commands` (slash commands), `app` (the terminal)."""
