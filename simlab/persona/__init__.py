"""Personas, what the user writes: the schema and its validation (schema), the library of shipped and
user personas (library), importers of other tools' character cards (cards), and the YAML writer (writer)."""
