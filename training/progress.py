"""Training progress: a bar over epochs and, inside each epoch, a bar over its batches with the
latest loss, so a long epoch (about a minute on 2 cores for MNIST's conv VAE) is not a minute of
silence. Under `torchrun` only rank 0 draws them (callers pass `enabled` accordingly)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Protocol, TypeVar

from tqdm.auto import tqdm

T_co = TypeVar("T_co", covariant=True)

REDRAW_S = 0.1
"""Least time between two redraws of a bar (tqdm's default); tests set 0 to see every step."""


class Bar(Protocol[T_co]):
    """The part of a tqdm bar the training loops use (tqdm itself is untyped)."""

    def __iter__(self) -> Iterator[T_co]: ...

    def set_postfix(
        self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any
    ) -> None: ...


def epoch_bar(first: int, epochs: int, enabled: bool) -> Bar[int]:
    """Epochs `first` .. `epochs - 1`; its postfix is the per-epoch summary (validation loss),
    kept on screen and in logs when training ends."""
    bar: Bar[int] = tqdm(
        range(first, epochs), desc="epochs", disable=not enabled, mininterval=REDRAW_S
    )
    return bar


def batch_bar(
    batches: Iterable[T_co], epoch: int, epochs: int, enabled: bool, total: int | None = None
) -> Bar[T_co]:
    """The batches of epoch `epoch` (0-based), erased when the epoch ends. Drawn only when stderr
    is a terminal (tqdm's `disable=None`): redirected to a file, a bar redrawn ten times a second
    is a wall of carriage returns, and the epoch bar's summary is what a log needs."""
    bar: Bar[T_co] = tqdm(
        batches,
        desc=f"epoch {epoch + 1}/{epochs}",
        total=total,  # a generator of batches has no len()
        unit="batch",
        leave=False,
        disable=None if enabled else True,
        mininterval=REDRAW_S,
        miniters=1,  # look at the clock every batch: a batch takes far longer than that
    )
    return bar
