"""The ``sft`` and ``ppm`` trainers (`rstar.interfaces.Trainer`), as the registry builds them.

Both follow the same life cycle (:meth:`LightningTrainer.fit`):

1. ``out_dir/model/`` holds a finished checkpoint (its marker file, written last, exists): return it.
2. With ``strategy: ddp`` or ``fsdp`` on several devices, start this machine's other ranks
   (`rstar_lightning._launch`); each runs the steps below on the same data.
3. Read the data, load the tokenizer and the model (a Hub id, a local directory, a ``.gguf`` file or
   ``package:<name>``, resolved by :func:`rstar.models.resolve_source`), add the step-format tags as
   tokens, wrap in LoRA (`rstar_lightning._run.begin`, `rstar_lightning._run.adapt`), and build the
   trainer's Lightning module (`rstar_lightning.sft`, `rstar_lightning.ppm`).
4. Run a Lightning ``Trainer``; when ``out_dir/checkpoints/last.ckpt`` exists (a killed run) it resumes
   from there instead of starting over (`rstar_lightning._run.train`).
5. Rank 0 saves a Hugging Face directory (safetensors, tokenizer files; LoRA merged into the weights),
   then ``metrics.json``, then the marker (`rstar_lightning._checkpoint`); the other ranks write nothing.

This module and `rstar_lightning.options` import no torch, transformers or lightning, so that listing
plugins or validating a recipe stays cheap: building a trainer checks that they are installed, and
:meth:`~LightningTrainer.fit` imports the modules that use them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from rstar.errors import MissingExtraError
from rstar_lightning.options import PPMOptions, SFTOptions, TrainOptions

if TYPE_CHECKING:
    from collections.abc import Callable

    import lightning.pytorch as pl

    from rstar_lightning._run import Start


def require_extras(component: str) -> None:
    """Raise `MissingExtraError` (pointing at ``pip install 'rstar[train]'``) if a training package is missing."""
    for module, extra in (("torch", "hf"), ("transformers", "hf"), ("lightning", "train"), ("peft", "train")):
        try:
            __import__(module)
        except ImportError:
            raise MissingExtraError(component, module, extra) from None


class LightningTrainer:
    """Base of the ``sft`` and ``ppm`` trainers (`rstar.interfaces.Trainer`).

    ``fit`` returns a finished ``out_dir/model/`` at once; otherwise it starts the other local ranks
    (several devices), runs :meth:`_fit` as rank 0 and waits for them.
    """

    Options: ClassVar[type[TrainOptions]] = TrainOptions
    name: ClassVar[str] = "trainer"

    def __init__(self, options: TrainOptions) -> None:
        require_extras(f"the {self.name!r} trainer")
        self.options = options

    def fit(self, data: Path, init_model: str, out_dir: Path) -> Path:
        """Train from ``init_model`` on the JSONL file ``data``; resume a killed run; skip a finished one."""
        from rstar_lightning import _checkpoint, _launch  # torch and lightning, checked by __init__

        data, out_dir = Path(data), Path(out_dir)
        if not _checkpoint.model_complete(out_dir):
            with _launch.local_ranks(self, data, init_model, out_dir):
                self._fit(data, init_model, out_dir)
        return out_dir / "model"

    def _fit(self, data: Path, init_model: str, out_dir: Path) -> None:
        """One rank's run: prepare the Lightning module, then :meth:`_train_and_save` it."""
        raise NotImplementedError

    def _train_and_save(
        self,
        module: pl.LightningModule,
        collate: Callable[[list[Any]], Any],
        items: tuple[list[Any], list[Any]],
        start: Start,
        run: tuple[Path, str, Path],
        counts: dict[str, Any],
        extra_config: dict[str, Any] | None = None,
        validate_first: bool = False,
    ) -> None:
        """Fit ``module`` on ``items`` = ``(train, validation)`` and save it (rank 0); ``run`` is
        ``(data, init_model, out_dir)``, ``counts`` (examples, dropped, ...) join the metrics."""
        from rstar_lightning import _run

        _run.train_and_save(
            self.name, self.options, module, collate, items, start, run, counts, extra_config, validate_first
        )


class SFTTrainer(LightningTrainer):
    """The ``sft`` trainer (`rstar.interfaces.Trainer`): ``fit`` writes ``out_dir/model/`` and returns it.

    What it trains and how: `rstar_lightning.sft`.
    """

    Options = SFTOptions
    name = "sft"
    options: SFTOptions

    def _fit(self, data: Path, init_model: str, out_dir: Path) -> None:
        from rstar_lightning import sft

        sft.fit(self, data, init_model, out_dir)


class PPMTrainer(LightningTrainer):
    """The ``ppm`` trainer (`rstar.interfaces.Trainer`): ``fit`` writes ``out_dir/model/`` and returns it.

    ``init_model`` is usually the round's SFT checkpoint. What it trains and how: `rstar_lightning.ppm`.
    """

    Options = PPMOptions
    name = "ppm"
    options: PPMOptions

    def _fit(self, data: Path, init_model: str, out_dir: Path) -> None:
        from rstar_lightning import ppm

        ppm.fit(self, data, init_model, out_dir)


__all__ = ["LightningTrainer", "PPMTrainer", "SFTTrainer", "require_extras"]
