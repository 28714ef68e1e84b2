"""LeNet-300-100: the MNIST multilayer perceptron of the lottery-ticket papers.

Flatten -> 300 -> 100 -> classes with ReLU; the binary-activation variant puts BN and sign
after each hidden layer (the classifier sees binary inputs).
"""

from __future__ import annotations

from dataclasses import dataclass

from ticketkit import ArchSpec, hookimpl, option


@dataclass(frozen=True)
class MLPOptions:
    width: float = option(1.0, "width multiplier for the two hidden layers")
    binary_act: bool = option(False, "sign activations with BN before each (MPT-1/1)")
    affine_bn: bool = option(True, "learnable BatchNorm scale/shift (only with binary_act)")
    bias: bool = option(True, "biases on the linear layers")


def build(input, *, width: float, binary_act: bool, affine_bn: bool, bias: bool):
    from torch import nn

    from ticketkit.models import activation, norm, scaled

    layers: list = [nn.Flatten()]
    n_in = input.channels * input.height * input.width
    for n in (scaled(300, width, "mlp"), scaled(100, width, "mlp")):
        layers.append(nn.Linear(n_in, n, bias=bias))
        layers += [norm(n, 1, affine_bn), activation(True)] if binary_act else [activation(False)]
        n_in = n
    layers.append(nn.Linear(n_in, input.classes, bias=bias))
    return nn.Sequential(*layers)


@hookimpl
def ticketkit_register_archs(register):
    register(
        ArchSpec(
            name="mlp",
            summary="LeNet-300-100 multilayer perceptron",
            factory=build,
            options=MLPOptions,
        )
    )
