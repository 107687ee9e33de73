"""Writing nnU-Net plans: a target's plans from a pretrained checkpoint, cheaper variants of a dataset's
plans, and one plans file per 2-D view."""
