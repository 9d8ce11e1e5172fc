"""Compare: a spec of persona variants (spec), sampling it into a session (sweep), the statistics of
what came out (stats, over the pure metrics), and the reports (report)."""
