"""Training: stages (what trains), the run under HF Trainer/DeepSpeed, and the dry-run plan."""
