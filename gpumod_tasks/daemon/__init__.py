"""The model manager daemon: homeGPT's switch API and an OpenAI-compatible router that wakes models on demand."""
