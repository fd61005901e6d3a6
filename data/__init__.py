"""Datasets: offline, deterministic, step-indexed."""

from trainlab.data.datasets import DATASET_NAMES, Dataset, make_dataset

__all__ = ["DATASET_NAMES", "Dataset", "make_dataset"]
