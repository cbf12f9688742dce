"""Training: the HF Trainer with the papers' recipes, checkpoints and resume (trainer.py, behind
train.py), and the live PreMemAcc callback for anyone's Trainer (callbacks.py)."""
