"""Pure optax code: schedules and optimizers. No Flax, no Orbax, no I/O."""
