"""Optimisers and learning-rate schedules."""

from miniran.optim.schedules import CosineLR, MultiStepLR, OneCycleLR, paper_schedule
from miniran.optim.sgd import SGD

__all__ = ["CosineLR", "MultiStepLR", "OneCycleLR", "SGD", "paper_schedule"]
