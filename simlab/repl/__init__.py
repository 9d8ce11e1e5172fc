"""The chat REPL: its state and the chat's own actions (state), slash commands (commands), what the
report commands print (views), and the terminal (app)."""
