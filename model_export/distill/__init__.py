"""Distillation of a GLAD checkpoint into a cheaper student (docs/distillation.md).

Kept import-free: ``glad-edge distill --help`` and the CLI's parser load ``commands`` without torch."""
