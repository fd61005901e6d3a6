"""trainlab: efficient training algorithms in JAX.

The installed package maps the checkout's library folders: `trainlab.data` is `data/`,
`trainlab.models` is `models/`, `trainlab.algorithms` is `algorithms/` and
`trainlab.training` is `training/` (see `pyproject.toml`).
"""

__version__ = "0.2.0"
