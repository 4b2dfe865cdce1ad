"""XKD pretraining under DeepSpeed: config filling, data epochs, checkpoints, metrics and the loop."""
