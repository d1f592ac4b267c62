"""Optimisers and learning-rate schedules."""

from miniran.optim.schedules import CosineLR, MultiStepLR, paper_schedule
from miniran.optim.sgd import SGD

__all__ = ["CosineLR", "MultiStepLR", "SGD", "paper_schedule"]
