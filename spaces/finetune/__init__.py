"""Fine-tuning page: train a BERT-family classifier live (full, frozen layers, head only, LoRA) and compare runs."""
