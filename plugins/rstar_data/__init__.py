"""Bundled plugin: dataset loaders."""

from __future__ import annotations

from rstar import hookimpl
from rstar.hookspecs import RegisterFn


@hookimpl
def register_datasets(register: RegisterFn) -> None:
    register("jsonl", "rstar_data.loaders:JsonlDataset", description="a JSONL file of {id, question, answer}")
    register(
        "benchmark",
        "rstar_data.loaders:BenchmarkDataset",
        description="a standard evaluation set shipped with rstar: gsm8k, math500, aime2024 or amc23",
    )
    register("hf", "rstar_data.loaders:HubDataset", description="a Hugging Face dataset (needs network)")
    register(
        "arithmetic",
        "rstar_data.synthetic:ArithmeticDataset",
        description="generated one-operation word problems (CPU smoke runs, quickstart)",
    )
