"""``rstar rescore``: re-check stored trees with another answer checker or reward model, generating nothing.

Every finished search under a folder (a run: each round's ``search`` and ``search_unsolved``, each ``evaluate``
run, round 0's too; an ``rstar search`` folder; each cell of an ``rstar compare`` folder) is read back and
written again, with new fields, into a folder of its own next to it, ``<search folder>/rescore-<name>/``:
``trees.jsonl``, ``summary.json`` (the search's summary, recomputed, with a ``rescore`` entry saying what was
done) and ``DONE``. The original files are never written.

**With an answer checker** (``--answer-checker``, default: the one each search used), every answer in a tree
is checked again against the reference: each answer node's ``correct`` and the tree's ``correct`` are the new
checker's. Without a reward model the prediction stays the one the search chose.

**With a reward model** (``--reward-model``), every node the strategy would score gets a new ``value``: the
model's score of the solution up to that node (the question rendered with the search's step format, then the
steps from the root). Those are the answers and the steps that are not terminal; a leaf that ended the
solution without an answer (too many code errors, too many steps, no stop string) keeps what the strategy gave
it (``mcts``: -1; others: nothing). ``--answers-only`` scores the answers alone. Then the prediction is picked
again from the new scores:

* ``best_of_n``, ``self_consistency``, ``greedy``: a vote over the chains' answers, ``weighted`` (the class of
  equivalent answers with the highest summed score; a recipe with ``vote: reward`` keeps ``best``: the
  highest score); the winning class's first chain gives the answer, as the strategy does. ``greedy`` has one
  chain: nothing changes but its values. The answer nodes' ``q_value`` is the new score, as the strategy
  writes it.
* ``mcts``: the answer with the highest new score (ties: the first in breadth-first order), which is what
  ``mode: test`` picks (an answer's Q there is its reward-model score). With ``runs > 1`` each run's
  best-scored answer joins a pool voted on as the recipe's ``vote`` and ``vote_top_n`` say. Visits and
  Q-values stay the search's: they came from rollouts that another model would have steered elsewhere, which
  only searching again can show.
* ``beam``: the answer with the highest new score (ties: the first in breadth-first order), the strategy's own
  rule; each node's ``q_value`` is its new score, as the strategy writes it. Which nodes the beam kept is
  the search's.
* any other strategy: the answer with the highest new score.

``--vote best|weighted|majority`` overrides the vote (``majority``: the largest class, ties to the higher
summed score, then to the class seen first). A reward-model option may name a checkpoint of the run
(``model=@round.ppm``, ``@previous.ppm``): for each search it stands for that search's round's model; a search
whose round has no such model (round 0, a round not yet trained) is left out, and so is a search that has not
finished, or whose round's ``extract`` stage has not run yet (it would read the re-scored trees too).
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from rstar.config import ComponentSpec, RecipeChecker, apply_overrides, merge_over, round_config
from rstar.errors import ConfigError, RstarError
from rstar.options import validate_options
from rstar.registry import Registry
from rstar.rundir import TREES, is_done, mark_done, read_summary, read_trees, write_jsonl
from rstar.runner import CHECKPOINT_MARKER, ComponentCache, replace_markers, search_summary
from rstar.steps import SENTINELS, StepFormat, StepFormatOptions
from rstar.types import Node, RewardRequest, Tree

Vote = Literal["best", "weighted", "majority"]
PREFIX = "rescore-"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
SAMPLING = ("best_of_n", "self_consistency", "greedy")
"""Strategies whose prediction is a vote over independent chains' answers."""
ROUND = re.compile(r"^round_(\d+)$")


@dataclass(frozen=True)
class Target:
    """A finished search to re-score: its folder, and the recipe keys it searched with."""

    folder: Path
    run_dir: Path
    """The folder of the ``config.yaml`` it belongs to (a run, a search, a compare cell)."""
    round: int | None
    """Its round in a run (0: round 0's evaluation); None outside a run."""
    recipe: Mapping[str, Any]
    """The keys of its search, rounds and sections merged in as the runner did (not validated again)."""


@dataclass(frozen=True)
class Skipped:
    folder: Path
    reason: str


@dataclass
class Outcome:
    """What re-scoring one search did."""

    target: Target
    folder: Path
    summary: dict[str, Any]
    before: dict[str, Any]


# --- finding the searches ---------------------------------------------------------------------------


def find_targets(root: Path) -> tuple[list[Target], list[Skipped]]:
    """The finished searches under ``root`` (or ``root`` itself), each with its recipe; and those left out, why."""
    root = root.resolve()
    if not root.is_dir():
        raise RstarError(f"{root}: no such folder")
    trees = [root / TREES] if (root / TREES).is_file() else sorted(root.rglob(TREES))
    trees = [p for p in trees if not any(part.startswith(PREFIX) for part in p.relative_to(root).parts)]
    if not trees:
        raise RstarError(
            f"{root}: no {TREES} in it; give a run, `rstar search` or `rstar compare` folder (or one search's folder)"
        )
    targets: list[Target] = []
    skipped: list[Skipped] = []
    for path in trees:
        folder = path.parent
        if not is_done(folder):
            skipped.append(Skipped(folder, "the search has not finished; rescore it when it has"))
            continue
        run_dir = _config_dir(folder)
        if run_dir is None:
            skipped.append(Skipped(folder, "no config.yaml above it: the recipe it searched with is unknown"))
            continue
        data = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
        located = _locate(data, folder.relative_to(run_dir).parts)
        if isinstance(located, str):
            skipped.append(Skipped(folder, located))
            continue
        round_index, recipe = located
        if round_index is not None and folder.name in ("search", "search_unsolved"):
            stages = data.get("stages") or []
            if "extract" in stages and not is_done(run_dir / f"round_{round_index}" / "extract"):
                skipped.append(
                    Skipped(
                        folder,
                        "its round's extract stage has not run yet and would read the re-scored trees as well; "
                        "rescore after it",
                    )
                )
                continue
        targets.append(Target(folder, run_dir, round_index, recipe))
    return targets, skipped


def _config_dir(folder: Path) -> Path | None:
    for parent in [folder, *folder.parents]:
        if (parent / "config.yaml").is_file():
            return parent
    return None


def _locate(data: Mapping[str, Any], parts: Sequence[str]) -> tuple[int | None, Mapping[str, Any]] | str:
    """The round and the recipe keys of the search in ``parts`` (its folder, relative to the run folder), or
    why they cannot be told."""
    if list(parts) == ["search"]:
        return None, data
    match = ROUND.match(parts[0]) if parts else None
    if match is None:
        return f"not a search folder of a run, `rstar search` or a compare cell ({'/'.join(parts)})"
    k = int(match.group(1))
    rounds = data.get("rounds", 1)
    count = len(rounds) if isinstance(rounds, list) else int(rounds)
    if not 0 <= k <= count:
        return f"round {k}: the run's recipe has {count} round(s)"
    round_data = round_config(data, max(k, 1))
    rest = list(parts[1:])
    if rest == ["search"] and k >= 1:
        return k, round_data
    if rest == ["search_unsolved"] and k >= 1 and isinstance(round_data.get("search_unsolved"), Mapping):
        return k, merge_over(round_data, round_data["search_unsolved"])
    evaluate = round_data.get("evaluate")
    if len(rest) == 2 and rest[0] == "evaluate" and isinstance(evaluate, Mapping):
        run = (evaluate.get("runs") or {}).get(rest[1])
        if isinstance(run, Mapping):
            over = {**({"dataset": evaluate["dataset"]} if evaluate.get("dataset") is not None else {}), **run}
            return k, merge_over(round_data, over)
    return f"the recipe names no search for {'/'.join(parts)}"


# --- the command's options ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rescoring:
    """What to re-score with: the command line's components, validated; None keeps each search's own checker."""

    name: str
    checker: ComponentSpec | None
    reward_model: ComponentSpec | None
    vote: Vote | None
    answers_only: bool


def rescoring(
    registry: Registry,
    answer_checker: str | None,
    reward_model: str | None,
    settings: Sequence[str],
    *,
    name: str | None = None,
    vote: Vote | None = None,
    answers_only: bool = False,
) -> Rescoring:
    """The components of ``--answer-checker NAME``, ``--reward-model NAME`` and ``answer_checker.KEY=VALUE`` /
    ``reward_model.KEY=VALUE`` settings, validated (every problem at once)."""
    problems = []
    for item in settings:
        key = item.partition("=")[0]
        if "=" not in item or key.split(".", 1)[0] not in ("answer_checker", "reward_model") or "." not in key:
            problems.append(f"{item!r}: expected answer_checker.KEY=VALUE or reward_model.KEY=VALUE")
    if problems:
        raise ConfigError(problems)
    chosen = [f"answer_checker.name={answer_checker}"] if answer_checker else []
    chosen += [f"reward_model.name={reward_model}"] if reward_model else []
    data = apply_overrides({}, [_quoted(item) for item in (*chosen, *settings)])
    checker = RecipeChecker(registry)
    specs: dict[str, ComponentSpec | None] = {}
    for key in ("answer_checker", "reward_model"):
        value = data.get(key)
        if value is not None and "name" not in value:
            problems.append(f"{key}: options given without a component; add --{key.replace('_', '-')} NAME")
            continue
        specs[key], found = checker.component(key, value, key) if value is not None else (None, [])
        problems += found
    if not problems and specs.get("answer_checker") is None and specs.get("reward_model") is None:
        problems.append("nothing to re-score with: give --answer-checker NAME and/or --reward-model NAME")
    if vote is not None and specs.get("reward_model") is None:
        problems.append("--vote picks the prediction by new scores: give --reward-model NAME too")
    label = name or "-".join(spec.name for spec in (specs.get("reward_model"), specs.get("answer_checker")) if spec)
    if not NAME.match(label):
        problems.append(f"--name {label!r}: use letters, digits, '_', '.' and '-'")
    if problems:
        raise ConfigError(problems)
    return Rescoring(label, specs.get("answer_checker"), specs.get("reward_model"), vote, answers_only)


def _quoted(setting: str) -> str:
    """``KEY=VALUE`` with VALUE quoted when it is not YAML on its own (``model=@round.ppm``): it is a string."""
    key, _, raw = setting.partition("=")
    try:
        yaml.safe_load(raw)
    except yaml.YAMLError:
        return f"{key}={json.dumps(raw)}"
    return setting


# --- re-scoring ---------------------------------------------------------------------------------------------


def rescore_all(
    root: Path, plan: Rescoring, registry: Registry, on_done: Callable[[Outcome], None] = lambda outcome: None
) -> tuple[list[Outcome], list[Skipped]]:
    """Re-score every finished search under ``root`` into its ``rescore-<name>/`` folder; ``on_done`` sees each
    search as it is written. A search whose reward model names a checkpoint its round lacks is left out."""
    targets, skipped = find_targets(root)
    cache = ComponentCache(registry)
    outcomes = []
    try:
        for target in targets:
            try:
                reward_spec = _resolved(plan.reward_model, target) if plan.reward_model is not None else None
            except ConfigError as exc:
                skipped.append(Skipped(target.folder, str(exc)))
                continue
            outcomes.append(rescore_search(target, plan, cache, reward_spec))
            on_done(outcomes[-1])
    finally:
        cache.close()
    return outcomes, skipped


def rescore_search(
    target: Target, plan: Rescoring, cache: ComponentCache, reward_spec: ComponentSpec | None = None
) -> Outcome:
    """Re-score one search (see the module's description) with ``reward_spec`` (``plan``'s reward model, its
    checkpoint markers resolved) and write its folder."""
    started = time.perf_counter()
    recipe = target.recipe
    checker_spec = plan.checker or _recipe_component(cache.registry, recipe, "answer_checker")
    checker = cache.get(checker_spec)
    reward = cache.get(reward_spec) if reward_spec is not None else None
    fmt = StepFormat.from_config(
        validate_options(StepFormatOptions, dict(recipe.get("step_format") or {}), "step_format")
    )
    search = dict(recipe.get("search") or {})
    batch = int(recipe.get("max_batch", 256))
    trees = list(read_trees(target.folder / TREES).values())
    rescorer = _Rescorer(checker, reward, fmt, search, plan, batch)
    new_trees = asyncio.run(rescorer.run(trees))

    before = read_summary(target.folder)
    out = target.folder / f"{PREFIX}{plan.name}"
    if out.exists():
        shutil.rmtree(out)
    write_jsonl(out / TREES, (t.to_dict() for t in new_trees))
    summary = search_summary(new_trees, float(before.get("seconds", 0.0)), str(before.get("strategy", "")))
    models = dict(before.get("models") or {})
    model = getattr(reward_spec.options, "model", None) if reward_spec is not None else None
    if model is not None:
        models["reward_model"] = model
    summary["models"] = models
    summary["rescore"] = {
        "of": str(target.folder),
        "answer_checker": checker_spec.to_dict(),
        "reward_model": reward_spec.to_dict() if reward_spec is not None else None,
        "vote": rescorer.vote(new_trees[0].strategy if new_trees else "") if reward is not None else None,
        "answers_only": plan.answers_only,
        "reward_calls": rescorer.reward_calls,
        "reward_tokens": rescorer.reward_tokens,
        "changed_predictions": sum(a.prediction != b.prediction for a, b in zip(trees, new_trees, strict=True)),
        "changed_correct": sum(a.correct != b.correct for a, b in zip(trees, new_trees, strict=True)),
        "accuracy_before": before.get("accuracy"),
        "seconds": round(time.perf_counter() - started, 2),
    }
    mark_done(out, summary)
    return Outcome(target, out, summary, before)


def _recipe_component(registry: Registry, recipe: Mapping[str, Any], key: str) -> ComponentSpec:
    value = recipe.get(key) or {"name": "math_verify"}
    spec, problems = RecipeChecker(registry).component(key, value, key)
    if problems or spec is None:
        raise ConfigError(problems or [f"{key}: the search's recipe has none"])
    return spec


def _resolved(spec: ComponentSpec, target: Target) -> ComponentSpec:
    """``spec`` with checkpoint markers (``@round.ppm``, ``@previous.sft``, ...) standing for the target's round's
    models, which must exist."""

    def resolve(marker: str, path: str) -> str:
        match = CHECKPOINT_MARKER.fullmatch(marker)
        assert match is not None
        if target.round is None:
            raise ConfigError([f"{path}: {marker} names a model of a run's round, and this search is not in a run"])
        k = target.round - (match["which"] == "previous")
        if k < 1:
            raise ConfigError([f"{path}: {marker}: round {target.round} has no such model"])
        folder = target.run_dir / f"round_{k}" / f"train_{match['model']}"
        if not is_done(folder):
            raise ConfigError([f"{path}: {marker} is {folder / 'model'}, which round {k} has not trained"])
        return str(folder / "model")

    resolved: ComponentSpec = replace_markers(spec, resolve, spec.kind)
    return resolved


class _Rescorer:
    """Re-scores the trees of one search: values, then correctness, then the prediction."""

    def __init__(
        self,
        checker: Any,
        reward: Any,
        fmt: StepFormat,
        search: Mapping[str, Any],
        plan: Rescoring,
        batch: int,
    ) -> None:
        self.checker = checker
        self.reward = reward
        self.fmt = fmt
        self.search = search
        self.plan = plan
        self.batch = max(1, batch)
        self.reward_calls = 0
        self.reward_tokens = 0

    def vote(self, strategy: str) -> Vote:
        """How the prediction is picked: ``--vote``, else the strategy's own way with scores."""
        if self.plan.vote is not None:
            return self.plan.vote
        if strategy in SAMPLING:
            return "best" if self.search.get("vote") == "reward" else "weighted"
        if strategy == "mcts" and int(self.search.get("runs", 1)) > 1:
            return self.search.get("vote", "best")  # type: ignore[no-any-return]
        return "best"

    async def run(self, trees: list[Tree]) -> list[Tree]:
        if self.reward is not None:
            trees = await self._values(trees)
        trees = await self._correctness(trees)
        if self.reward is not None:
            trees = [await self._repick(t) for t in trees]
        return trees

    async def _values(self, trees: list[Tree]) -> list[Tree]:
        wanted: list[tuple[int, int]] = []
        requests: list[RewardRequest] = []
        for t, tree in enumerate(trees):
            prompt = self.fmt.render_prompt(tree.question)
            texts = _path_texts(tree)
            for n, node in enumerate(tree.nodes):
                if node.parent is None or (node.terminal and not _is_answer(node)):
                    continue
                if self.plan.answers_only and not _is_answer(node):
                    continue
                wanted.append((t, n))
                requests.append(RewardRequest(prompt, texts[node.id]))
        scores = await self._score(requests)
        nodes = [list(tree.nodes) for tree in trees]
        for (t, n), score in zip(wanted, scores, strict=True):
            node = nodes[t][n]
            strategy = trees[t].strategy
            # The strategies that write a node's score as its Q: beam (every scored node), the sampling ones (answers).
            q = score if strategy == "beam" or (strategy in SAMPLING and _is_answer(node)) else node.q_value
            nodes[t][n] = replace(node, value=score, q_value=q)
        return [replace(tree, nodes=tuple(ns)) for tree, ns in zip(trees, nodes, strict=True)]

    async def _score(self, requests: list[RewardRequest]) -> list[float]:
        counted = getattr(self.reward, "score_with_tokens", None)
        scores: list[float] = []
        for start in range(0, len(requests), self.batch):
            chunk = requests[start : start + self.batch]
            if callable(counted):
                pairs = await counted(chunk)
                scores += [score for score, _ in pairs]
                self.reward_tokens += sum(tokens for _, tokens in pairs)
            else:
                scores += list(await self.reward.score(chunk))
            self.reward_calls += len(chunk)
        return scores

    async def _correctness(self, trees: list[Tree]) -> list[Tree]:
        """Each answer of each tree, and its prediction, checked against its reference (each text once a tree)."""
        pairs: list[tuple[str, Any]] = []
        index: dict[tuple[int, str], int] = {}
        for t, tree in enumerate(trees):
            if tree.answer is None:
                continue
            for answer in [*(n.final_answer for n in tree.nodes if _is_answer(n)), tree.prediction]:
                if answer is not None and (t, answer) not in index:
                    index[t, answer] = len(pairs)
                    pairs.append((answer, tree.answer))
        verdicts = await self._check(pairs)
        out = []
        for t, tree in enumerate(trees):
            if tree.answer is None:
                out.append(tree)
                continue
            nodes = tuple(
                replace(n, correct=verdicts[index[t, n.final_answer or ""]]) if _is_answer(n) else n for n in tree.nodes
            )
            correct = verdicts[index[t, tree.prediction]] if tree.prediction is not None else False
            out.append(replace(tree, nodes=nodes, correct=bool(correct)))
        return out

    async def _check(self, pairs: Sequence[tuple[str, Any]]) -> list[bool]:
        verdicts: list[bool] = []
        for start in range(0, len(pairs), self.batch):
            verdicts += list(await self.checker.check(list(pairs[start : start + self.batch])))
        return verdicts

    async def _repick(self, tree: Tree) -> Tree:
        answers = [n for n in tree.nodes if _is_answer(n)]
        if not answers:
            return tree
        mode = self.vote(tree.strategy)
        if tree.strategy == "mcts" and int(self.search.get("runs", 1)) > 1:
            runs: dict[int, Node] = {}
            for node in answers:  # each run's best-scored answer (run r's nodes are 0.r....)
                run = int(node.id.split(".")[1])
                if run not in runs or _value(node) > _value(runs[run]):
                    runs[run] = node
            pool = [runs[r] for r in sorted(runs)]
            top = sorted(range(len(pool)), key=lambda i: -_value(pool[i]))[: int(self.search.get("vote_top_n", 4))]
            answers = [pool[i] for i in sorted(top)]
        first_member = tree.strategy in SAMPLING
        chosen = await self._pick(answers, mode, first_member)
        correct = chosen.correct if tree.answer is not None else None
        return replace(tree, prediction=chosen.final_answer, correct=bool(correct) if correct is not None else correct)

    async def _pick(self, answers: list[Node], mode: Vote, first_member: bool) -> Node:
        """The answer ``mode`` picks (ties: the earlier answer)."""
        if mode == "best":
            return max(answers, key=_value)  # max keeps the first of equals
        groups = await self._groups([n.final_answer or "" for n in answers])

        def strength(group: list[int]) -> tuple[float, ...]:
            total = sum(_value(answers[i]) for i in group)
            return (len(group), total) if mode == "majority" else (total,)

        winner = max(groups, key=strength)
        if first_member:
            return answers[winner[0]]
        return answers[max(winner, key=lambda i: _value(answers[i]))]

    async def _groups(self, texts: list[str]) -> list[list[int]]:
        """Indices of equivalent answers (equal text, then the answer checker), classes in order of first appearance."""
        by_text: dict[str, list[int]] = {}
        for i, text in enumerate(texts):
            by_text.setdefault(text.strip(), []).append(i)
        reps = list(by_text)
        same = await self._check([(reps[i], reps[j]) for i in range(len(reps)) for j in range(i)])
        parent = list(range(len(reps)))

        def find(i: int) -> int:
            while parent[i] != i:
                i = parent[i]
            return i

        indices = [(i, j) for i in range(len(reps)) for j in range(i)]
        for (i, j), equal in zip(indices, same, strict=True):
            if equal:
                parent[find(i)] = find(j)
        groups: dict[int, list[int]] = {}
        for r, text in enumerate(reps):
            groups.setdefault(find(r), []).extend(by_text[text])
        return [sorted(g) for g in groups.values()]


def _is_answer(node: Node) -> bool:
    return node.terminal and node.final_answer is not None and node.final_answer not in SENTINELS


def _value(node: Node) -> float:
    return node.value if node.value is not None else float("-inf")


def _path_texts(tree: Tree) -> dict[str, str]:
    """Each node's solution so far: the texts of the steps from the root's first child down to it."""
    by_id = {n.id: n for n in tree.nodes}
    texts: dict[str, str] = {}

    def text(node_id: str) -> str:
        if node_id not in texts:
            node = by_id[node_id]
            texts[node_id] = "" if node.parent is None else text(node.parent) + node.text
        return texts[node_id]

    for node in tree.nodes:
        text(node.id)
    return texts


__all__ = ["Outcome", "Rescoring", "Skipped", "Target", "find_targets", "rescore_all", "rescore_search", "rescoring"]
