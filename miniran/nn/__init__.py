"""Neural-network modules: containers, parameters and layers."""

from miniran.nn import init
from miniran.nn.interpolation import UpsampleBilinear
from miniran.nn.conv import Conv2d
from miniran.nn.layers import Flatten, Identity, Linear, ReLU, Sigmoid
from miniran.nn.module import Module, Parameter, Sequential, load_arrays, save_arrays
from miniran.nn.normalization import BatchNorm2d
from miniran.nn.pooling import AvgPool2d, GlobalAvgPool2d, MaxPool2d

__all__ = [
    "AvgPool2d", "BatchNorm2d", "GlobalAvgPool2d", "MaxPool2d",
    "Conv2d",
    "UpsampleBilinear",
    "Flatten", "Identity", "Linear", "Module", "Parameter", "ReLU", "Sequential", "Sigmoid",
    "init", "load_arrays", "save_arrays",
]
