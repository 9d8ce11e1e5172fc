"""The residual stream: what a trace records (config), where trace files live (files), capturing it
during the engine's own decode (record), and reading it through the logit lens (lens)."""
