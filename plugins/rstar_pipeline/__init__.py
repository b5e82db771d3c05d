"""The self-evolution pipeline, as a bundled plugin: the stages of a round, the recipe sections they
read, the reports, and the ``extract``, ``train``, ``compare``, ``report`` and ``rescore`` commands.

The kernel (``rstar``) runs rounds of named stages and offers a resumable search; everything that
makes those rounds rStar-Math's lives here, registered through the same hooks a third-party plugin
uses. Block it (``RSTAR_BLOCK_PLUGINS=pipeline``) and ``rstar search`` (and a recipe of ``search`` stages,
the kernel's one stage) still works.
"""

from __future__ import annotations

from typing import Any

import rstar
from rstar import RegisterFn, RunInfo

SECTIONS = {
    "base_model": ("stages:check_base_model", "the model each round's SFT starts from (default: policy.model)"),
    "search_unsolved": ("stages:check_search_unsolved", "keys merged over the round's recipe to search again"),
    "extract": ("extract:ExtractOptions", "options of the extract stage"),
    "train_sft": ("stages:check_trainer", "the policy trainer, e.g. {name: sft, epochs: 2}"),
    "train_ppm": ("stages:check_trainer", "the PPM trainer, e.g. {name: ppm}"),
    "evaluate": ("stages:check_evaluate", "searches of held-out problems with the round's models"),
    "compare": ("compare:check_section", "the grid of `rstar compare`: strategies x budgets"),
}


@rstar.hookimpl
def register_stages(register: RegisterFn) -> None:
    from rstar_pipeline.stages import STAGES

    for name, cls, description in STAGES:
        register(name, f"rstar_pipeline.stages:{cls}", description=description)


@rstar.hookimpl
def register_sections(register: RegisterFn) -> None:
    for name, (factory, description) in SECTIONS.items():
        register(name, f"rstar_pipeline.{factory}", description=description)


@rstar.hookimpl
def register_commands(register: RegisterFn) -> None:
    register("extract", "rstar_pipeline.commands:extract", description="trees -> SFT data and preference pairs")
    register("train", "rstar_pipeline.commands:train", description="one training stage of a recipe")
    register("compare", "rstar_pipeline.commands:compare", description="strategies x budgets, a table and a plot")
    register("report", "rstar_pipeline.commands:report", description="report.md and report.png of any result folder")
    register("rescore", "rstar_pipeline.commands:rescore", description="re-check stored trees, generating nothing")


@rstar.hookimpl
def round_end(run: RunInfo, round: int, summary: dict[str, Any]) -> None:
    from rstar_pipeline.report import write_report

    write_report(run.output_dir)
