"""`nnunet-peft demo`: synthetic head CT source/target tasks and the end-to-end pipeline on them."""
