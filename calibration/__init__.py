"""Data and decisions that tie a bundle to a production line."""
