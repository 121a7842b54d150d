"""Training: data, distillation, the trainer, held-out evaluation and growth into bigger variants."""
