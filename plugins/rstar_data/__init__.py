"""Bundled plugin: dataset loaders."""

from __future__ import annotations

from rstar import hookimpl
from rstar.hookspecs import RegisterFn


@hookimpl
def register_datasets(register: RegisterFn) -> None:
    register("jsonl", "rstar_data.loaders:JsonlDataset", description="a JSONL file of {id, question, answer}")
    register("hf", "rstar_data.loaders:HubDataset", description="a Hugging Face dataset (needs network)")
    register(
        "arithmetic",
        "rstar_data.synthetic:ArithmeticDataset",
        description="generated one-operation word problems (CPU smoke runs, quickstart)",
    )
