"""Training of the small demo GLAD models on CPU (VAE, DINO-architecture features, UNet with ATP)."""

from model_export.train.build import TrainSettings, build_demo_checkpoint

__all__ = ["TrainSettings", "build_demo_checkpoint"]
