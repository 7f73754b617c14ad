"""From trained PyTorch GLAD checkpoints to deployable bundles."""
