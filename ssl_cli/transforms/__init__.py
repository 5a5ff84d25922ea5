"""Batched augmentation on the training device (ops) and the named views methods ask for (views)."""
