"""Pure optax code: schedules and optimizers. No Flax, no Orbax, no I/O.

Importing the package registers every schedule and optimizer by name for configs.
"""

from trainlab.algorithms import eco, knapsack, optimizers, quantize, schedules, sophia
