"""Weights: the project's safetensors + JSON format, and pinned, verified pulls from the Hugging Face Hub."""
