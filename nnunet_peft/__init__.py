"""Parameter-efficient fine-tuning of nnU-Net v2 networks."""
