"""Neural-network modules: containers, parameters and layers."""

from miniran.nn import init
from miniran.nn.layers import Flatten, Identity, Linear, ReLU, Sigmoid
from miniran.nn.module import Module, Parameter, Sequential, load_arrays, save_arrays

__all__ = [
    "Flatten", "Identity", "Linear", "Module", "Parameter", "ReLU", "Sequential", "Sigmoid",
    "init", "load_arrays", "save_arrays",
]
