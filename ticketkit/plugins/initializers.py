"""Weight initialisations for random-weight tickets (edge-popup, biprop; METHODS "Inits").

Each fills a tensor in place given sigma's ingredients: sigma = gain / sqrt(fan). The caller
decides the fan (fan_in, or fan_in * k for "scaled" init) and passes a seeded generator.
"""

from __future__ import annotations

import math

from ticketkit import InitializerSpec, hookimpl


def kaiming_normal(weight, *, fan, gain, generator):
    weight.normal_(0.0, gain / math.sqrt(fan), generator=generator)


def kaiming_uniform(weight, *, fan, gain, generator):
    bound = gain * math.sqrt(3.0 / fan)
    weight.uniform_(-bound, bound, generator=generator)


def signed_constant(weight, *, fan, gain, generator):
    """+-sigma with random signs: the "signed Kaiming constant" of edge-popup."""
    sigma = gain / math.sqrt(fan)
    weight.bernoulli_(0.5, generator=generator).mul_(2 * sigma).sub_(sigma)


def unsigned_constant(weight, *, fan, gain, generator):
    weight.fill_(gain / math.sqrt(fan))


@hookimpl
def ticketkit_register_initializers(register):
    for name, fn, summary in (
        ("kaiming-normal", kaiming_normal, "N(0, sigma^2), sigma = sqrt(2/fan)"),
        ("kaiming-uniform", kaiming_uniform, "U(-b, b), b = sigma * sqrt(3)"),
        ("signed-constant", signed_constant, "+-sigma with random signs"),
        ("unsigned-constant", unsigned_constant, "sigma everywhere"),
    ):
        register(InitializerSpec(name=name, summary=summary, factory=fn))
