"""What runs on the inspection station. Imports neither torch nor diffusers."""

__version__ = "0.1.0"
