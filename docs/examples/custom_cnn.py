"""A small CNN of your own, measured by mi-probe (docs/custom_models.md)."""

from torch import nn


class SmallCNN(nn.Module):
    """Three conv-batchnorm-ReLU stages and a linear classifier."""

    def __init__(self, num_classes: int = 10, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1))
        self.classifier = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


def small_cnn(num_classes: int) -> SmallCNN:
    """The factory a spec names: ``arch: custom_cnn:small_cnn``."""
    return SmallCNN(num_classes)
