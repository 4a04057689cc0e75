"""agir: the active-learning loop for agricultural image segmentation."""

__version__ = "0.1.0"
