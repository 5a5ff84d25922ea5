"""The engine: the config schema and its checks, the trainer, checkpoints, evaluation, loading a trained model."""
