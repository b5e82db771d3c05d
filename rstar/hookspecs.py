"""Every hook of rstar. Plugins implement them with ``@rstar.hookimpl``.

There are two families:

* **Registration hooks** are called once, when the component registry is built, by keyword: each
  implementation receives a ``register(name, factory, description="")`` callback (`RegisterFn`).
  ``factory`` is a class or callable taking the component's validated options, or a lazy
  ``"module:attr"`` string that is imported only when a recipe uses the component, so that listing
  plugins imports nothing heavy. A factory may carry an ``Options`` attribute: a pydantic model that
  validates the component's keys in a recipe (see `rstar.options.Options`).
* **Lifecycle hooks** observe a run; they never do per-node work and their return values are ignored. A run
  calls them in this order: ``run_start``; per stage ``stage_start``, then, for each search the stage makes,
  ``search_start``, ``search_progress`` (repeatedly), ``tree_done`` (per problem), ``search_end``; then
  ``stage_end``; ``round_end`` after each round; ``run_end``. The command line's live progress display is an
  implementation of these hooks, registered like any plugin, so another plugin can show or log the same.

Hooks discover and observe. Work on nodes goes through the components' batch methods.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import pluggy

if TYPE_CHECKING:
    from pathlib import Path

    from rstar.config import Recipe
    from rstar.engine import EngineSnapshot
    from rstar.types import RunInfo, Tree

hookspec = pluggy.HookspecMarker("rstar")


class RegisterFn(Protocol):
    """The ``register`` callback handed to registration hooks: ``register(name, factory, description="")``.

    ``factory`` is the component's class (or any callable taking its validated options), or a lazy
    ``"package.module:attr"`` string imported only when a recipe uses the component."""

    def __call__(self, name: str, factory: Any, description: str = "") -> None: ...


@hookspec
def register_policies(register: RegisterFn) -> None:
    """Register policy backends (`rstar.interfaces.PolicyBackend`).

    Called once when the registry is built. Recipes use a policy as ``policy: {name: NAME, ...}``.

    Example::

        @rstar.hookimpl
        def register_policies(register):
            register("my_engine", "my_plugin.engine:MyEngine", description="my serving engine")
    """


@hookspec
def register_verifiers(register: RegisterFn) -> None:
    """Register step verifiers (`rstar.interfaces.StepVerifier`): sandboxes that run step code.

    Called once when the registry is built. Recipes use one as ``verifier: {name: NAME, ...}`` and
    ``rstar sandbox exec --verifier NAME`` runs files through it.
    """


@hookspec
def register_reward_models(register: RegisterFn) -> None:
    """Register reward models (`rstar.interfaces.RewardModel`) that score partial solutions.

    Called once when the registry is built. Recipes use one as ``reward_model: {name: NAME, ...}``.
    """


@hookspec
def register_search_strategies(register: RegisterFn) -> None:
    """Register search strategies (`rstar.interfaces.SearchStrategy`).

    Called once when the registry is built. Recipes use one as ``search: {name: NAME, ...}``; the
    strategy's options model validates the other keys.
    """


@hookspec
def register_trainers(register: RegisterFn) -> None:
    """Register trainers (`rstar.interfaces.Trainer`) such as SFT and PPM training.

    Called once when the registry is built. Recipes use one as ``train_sft: {name: NAME, ...}`` or
    ``train_ppm: {name: NAME, ...}``.
    """


@hookspec
def register_answer_checkers(register: RegisterFn) -> None:
    """Register answer checkers (`rstar.interfaces.AnswerChecker`) deciding answer equivalence.

    Called once when the registry is built. Recipes use one as ``answer_checker: {name: NAME, ...}``.
    """


@hookspec
def register_datasets(register: RegisterFn) -> None:
    """Register dataset loaders (`rstar.interfaces.Dataset`) that yield problems.

    Called once when the registry is built. Recipes use one as ``dataset: {name: NAME, ...}``.
    """


@hookspec
def register_stages(register: RegisterFn) -> None:
    """Register stages (`rstar.interfaces.Stage`): the named steps of a round that a recipe lists in
    ``stages: [...]``, such as ``search``, ``extract``, ``train_sft``.

    Called once when the registry is built. ``factory`` is the stage's class, built with no arguments.
    A stage's ``needs`` (section -> example) lists the recipe sections it cannot run without.
    """


@hookspec
def register_sections(register: RegisterFn) -> None:
    """Register top-level recipe sections that a plugin owns (``extract:``, ``train_sft:``, ...).

    Called once when the registry is built. ``factory`` validates the section's value, once, when the
    recipe is loaded: an `rstar.options.Options` model (for a mapping of keys), or a function
    ``check(value, data, checker, path) -> (typed value, problems)`` (``data``: the whole recipe) given a
    `rstar.config.RecipeChecker` to
    validate component specs or derived recipes with. Stages read the typed value with
    ``ctx.recipe.section(name)``; a recipe key no kernel field and no plugin section claims is an error.
    """


@hookspec
def register_commands(register: RegisterFn) -> None:
    """Register extra ``rstar`` sub-commands.

    Called once when the registry is built (the command line builds it to list its commands).
    ``factory`` is a ``click.Command`` or a lazy ``"module:attr"`` string naming one; it is imported
    only when that command runs (or its help is shown), so ``rstar --help`` stays fast.
    """


@hookspec
def run_start(run: RunInfo) -> None:
    """Called when ``rstar run`` or ``rstar search`` starts, after the run folder and its resolved
    config are written and before the first stage. ``run.output_dir`` is the run folder."""


@hookspec
def stage_start(run: RunInfo, round: int, stage: str, folder: Path, skipped: bool) -> None:
    """Called before each stage of a round (``round`` 1-based; 0 for the single stage of ``rstar search``),
    with the stage's ``folder``. ``skipped`` is True when the folder is already marked done by an earlier run:
    the stage does not run again and no ``stage_end`` follows."""


@hookspec
def search_start(run: RunInfo, round: int, stage: str, folder: Path, recipe: Recipe, total: int, done: int) -> None:
    """Called when a search starts, before its components are loaded: a ``search`` stage, each run of an
    ``evaluate`` stage, each cell of ``rstar compare``. ``folder`` holds its ``trees.jsonl``; ``recipe`` is the
    validated recipe it searches with (checkpoint markers resolved); ``total`` problems, of which ``done`` are
    already in ``trees.jsonl`` from an earlier, interrupted run and are not searched again."""


@hookspec
def search_progress(run: RunInfo, round: int, stage: str, folder: Path, snapshot: EngineSnapshot) -> None:
    """Called while a search runs, at most every half second (and once when it finishes), with the engine's
    counters: problems done and in flight, answers and accuracy so far, tokens, verifier jobs, reward calls,
    policy batch fill and seconds (`rstar.engine.EngineSnapshot`). The counters cover the problems searched
    now, not the ``done`` ones of ``search_start``.

    Runs on the event loop of the search: keep it quick, never block. Not called when no plugin implements it
    (the search then keeps no timer)."""


@hookspec
def executor_event(run: RunInfo, round: int, stage: str, folder: Path, event: str, payload: dict[str, object]) -> None:
    """Called by an executor that runs a search elsewhere (``executor: {name: ray}``): ``executor_start``,
    ``worker_ready`` and ``worker_lost`` (a worker's problems go back to the queue), ``executor_progress`` (about
    once a second: ``payload["workers"]``, one mapping per worker with ``state``, ``in_flight``, ``done`` and
    ``problems_per_s``; ``queued``, ``done``) and ``executor_end``. The search's own counters still come through
    ``search_progress``, summed over the workers."""


@hookspec
def search_end(run: RunInfo, round: int, stage: str, folder: Path, summary: dict[str, object]) -> None:
    """Called when a search has finished, every tree written, with its summary (accuracy, spend, seconds; the
    same summary a ``search`` stage's ``stage_end`` gets). Not called when the search fails: ``run_end`` is."""


@hookspec
def stage_end(run: RunInfo, round: int, stage: str, summary: dict[str, object]) -> None:
    """Called after a stage finishes and is marked done, with the stage's summary (for a search:
    accuracy, tokens, time). ``round`` is 1-based in ``rstar run`` and 0 for the single stage of
    ``rstar search``. Not called for stages skipped because they were already done."""


@hookspec
def round_end(run: RunInfo, round: int, summary: dict[str, dict[str, object]]) -> None:
    """Called after every stage of round ``round`` (1-based) is done; ``summary`` maps each stage to
    its summary."""


@hookspec
def tree_done(run: RunInfo, tree: Tree) -> None:
    """Called for each problem's finished search tree, right after it is appended to ``trees.jsonl``.

    Runs on the event loop of the search: keep it quick (log, count, forward), never block."""


@hookspec
def run_end(run: RunInfo, summary: dict[str, object]) -> None:
    """Called once when a run ends, successfully or not. ``summary["status"]`` is ``"ok"`` or
    ``"failed"``; on failure ``summary["error"]`` holds the error message."""
