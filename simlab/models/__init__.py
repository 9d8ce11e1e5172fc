"""Models: a spec -> (model, tokenizer, info) (load), GGUF conversion and its cache (gguf), hub and
folder loading (hub), device and dtype (device), and what is available here (catalog)."""
