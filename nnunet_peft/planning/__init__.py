"""Writing nnU-Net plans: cheaper variants of a dataset's plans, and one plans file per 2-D view."""
