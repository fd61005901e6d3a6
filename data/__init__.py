"""Datasets: offline, deterministic, step-indexed."""

from data.datasets import DATASET_NAMES, Dataset, make_dataset
from data.errors import UsageError
