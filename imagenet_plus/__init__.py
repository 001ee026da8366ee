"""imagenet-plus: Dataset Reinforcement for torchvision datasets."""
__version__ = "0.1.0"
