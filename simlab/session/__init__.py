"""Sessions: the tree of turns (tree, pure), the file format (journal), sessions on disk (store),
other formats (formats: Markdown, YAML, Loom) and tree drawing (views)."""
