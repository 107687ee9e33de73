"""Trainer classes that nnU-Net discovers through nnUNet_extTrainer (see nnunet_peft_trainers.py)."""
