"""The command line: the parser and the one error catch (main), what commands share (common), and one
module per command."""
