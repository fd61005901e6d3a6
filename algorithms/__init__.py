"""Pure optax code: schedules, optimizers, quantizers, rollout allocation. No Flax, no Orbax,
no I/O, and no import side effects: the tables configs name are explicit
(`schedules.SCHEDULES`, `trainlab.training.optimizers.OPTIMIZERS`)."""
