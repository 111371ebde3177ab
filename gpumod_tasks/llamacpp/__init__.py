"""Real llama.cpp on a CPU-only machine: build `llama-server` and write tiny GGUF models."""
