"""Networks that nnU-Net's plans can name (``architecture.network_class_name``) besides its own U-Nets."""
