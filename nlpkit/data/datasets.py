"""The pulled datasets as records in the standard shapes (``nlpkit.data.shapes``), split by a
hash of a stable key (``nlpkit.data.splits``). One reader per dataset turns the package's own
files (YAML lists, a truncated JSON array, a bzip2 CSV, lexicon tables) into records; what a
reader leaves out is counted by reason and reported, never dropped in silence.

``read_dataset("trivia", split="test")`` -> records such as
``{"instruction": "What is the capital of Peru?", "input": "", "output": "Lima", "answers": [...]}``.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nlpkit.data import readers
from nlpkit.data.shapes import SHAPES, convert
from nlpkit.data.splits import SPLITS, split_of
from nlpkit.errors import UsageError

Record = dict[str, Any]
Reader = Callable[[Path, collections.Counter[str]], Iterator[tuple[str, Record]]]


@dataclass(frozen=True)
class Dataset:
    """How one pulled dataset becomes records: a reader per shape it holds natively (the first
    is the default), and shapes derived from the default by ``shapes.convert``."""

    name: str
    readers: dict[str, Reader]
    derived: tuple[str, ...] = ()
    only_split: str | None = None  # every record in this split (an evaluation set: test)

    @property
    def shapes(self) -> tuple[str, ...]:
        return (*self.readers, *self.derived)

    @property
    def default_shape(self) -> str:
        return next(iter(self.readers))


DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in [
        Dataset("trivia", {"instruction": readers.trivia}, ("conversations", "completion")),
        Dataset("sharegpt", {"conversations": readers.sharegpt}, ("completion",)),
        Dataset(
            "chatterbot",
            {"conversations": readers.chatterbot, "instruction": readers.chatterbot_pairs},
            ("completion",),
        ),
        Dataset(
            "rotten-tomatoes",
            {
                "labelled": readers.rotten_tomatoes,
                "preference": readers.rotten_preference,
                "preference-chat": readers.rotten_preference_chat,
                "instruction": readers.rotten_reviews,
                "prompt": readers.rotten_prompts,
            },
            ("completion",),
        ),
        Dataset("vader-lexicon", {"labelled": readers.vader_lexicon}),
        Dataset("afinn", {"labelled": readers.afinn}),
        Dataset("mt-bench", {"prompt": readers.mt_bench}, ("conversations",), only_split="test"),
    ]
}


def get_dataset(name: str) -> Dataset:
    if name not in DATASETS:
        raise UsageError(f"unknown dataset {name!r}", hint=f"known: {', '.join(DATASETS)}")
    return DATASETS[name]


def read_dataset(
    name: str,
    split: str | None = None,
    shape: str | None = None,
    *,
    folder: Path | None = None,
    dropped: collections.Counter[str] | None = None,
) -> Iterator[Record]:
    """The records of a pulled dataset in ``shape`` (default: the dataset's own), each with its
    ``"split"``; only those of ``split`` when given. ``folder``: the dataset's files (default:
    the store's, pulled or exit 66). Records left out are counted in ``dropped`` by reason."""
    ds = get_dataset(name)
    shape = shape or ds.default_shape
    if shape not in ds.shapes:
        hint = f"{name} comes as {', '.join(ds.shapes)}"
        raise UsageError(
            f"{name} has no {shape!r} shape" if shape in SHAPES else f"unknown shape {shape!r}", hint=hint
        )
    if split is not None and split not in SPLITS:
        raise UsageError(f"unknown split {split!r}", hint=f"use {', '.join(SPLITS)}")
    if folder is None:
        from nlpkit.store.assets import asset_dir

        folder = asset_dir(name, kind="dataset")
    counts = dropped if dropped is not None else collections.Counter()
    return _records(ds, folder, shape, split, counts)  # checked above, read as it is consumed


def _records(
    ds: Dataset, folder: Path, shape: str, split: str | None, dropped: collections.Counter[str]
) -> Iterator[Record]:
    reader = ds.readers.get(shape, ds.readers[ds.default_shape])
    for key, record in reader(folder, dropped):
        where = ds.only_split or split_of(ds.name, key)
        if split is not None and where != split:
            continue
        if shape not in ds.readers:
            record = convert(record, ds.default_shape, shape)
        yield {**record, "split": where}
