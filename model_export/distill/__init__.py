"""Distillation of a GLAD teacher checkpoint into an edge student (docs/distillation.md)."""
