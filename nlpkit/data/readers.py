"""One reader per dataset: the package's own files in, ``(split key, record)`` out, in the
files' order. Each counts what it leaves out in ``dropped`` (reason -> count) for the caller to
report. The split key keeps related records together: a question's text, a conversation's id
(its parts share the split), a movie's name (no movie in two splits)."""

from __future__ import annotations

import collections
import csv
import itertools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nlpkit.data.shapes import ROLE_OF, problems
from nlpkit.errors import DataError

Record = dict[str, Any]
Dropped = collections.Counter[str]
Items = Iterator[tuple[str, Record]]

# --------------------------------------------------------------------------- trivia

# Red's 54 lists, less those that are no general knowledge: questions about a picture (their
# text is an image URL) and lists about video games.
TRIVIA_IMAGE_LISTS = frozenset(
    ["cars", "dota2abilities", "dota2items", "usflags", "usmap", "worldflags", "worldmap"]
    + ["whosthatpokemon"] + [f"whosthatpokemon{i}" for i in range(2, 9)]
)  # fmt: skip
TRIVIA_GAME_LISTS = frozenset(
    ["boombeach", "clashroyale", "doom", "finalfantasy", "leagueoflegends", "leagueults", "overwatch",
     "pokemon", "r6siege", "warcraft"]
)  # fmt: skip
_META = ("AUTHOR", "DESCRIPTION", "CONFIG")
_URL = re.compile(r"https?://")


def _yaml(path: Path) -> Any:
    """A YAML file with every scalar kept as the text it is (``Yes`` stays "Yes", ``1990``
    stays "1990": answers are strings to match, not booleans or numbers)."""
    import yaml  # pyyaml: a core dependency, imported only by the readers that need it

    loader = getattr(yaml, "CBaseLoader", yaml.BaseLoader)
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.load(f, Loader=loader)  # BaseLoader builds only str/list/dict
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise DataError(f"unreadable YAML ({str(e).splitlines()[0]})", where=str(path)) from None


def trivia(folder: Path, dropped: Dropped) -> Items:
    """``{"instruction": question, "input": "", "output": first answer, "answers": all,
    "category": list}``; a question asked in two lists is kept once (its answers merged)."""
    seen: dict[str, Record] = {}
    for path in sorted(folder.glob("*.yaml")):
        category = path.stem
        data = _yaml(path)
        if not isinstance(data, dict):
            raise DataError("expected a mapping of questions to answers", where=str(path))
        if category in TRIVIA_IMAGE_LISTS or category in TRIVIA_GAME_LISTS:
            dropped["question in a picture or video-game list"] += sum(q not in _META for q in data)
            continue
        for question, answers in data.items():
            if question in _META:
                continue
            text = " ".join(str(question).split())
            if _URL.search(text):
                dropped["question shows a picture (an image URL)"] += 1
                continue
            answers = (
                [" ".join(a.split()) for a in answers if isinstance(a, str)]
                if isinstance(answers, list)
                else []
            )
            answers = [a for a in answers if a]
            if not text or not answers:
                dropped["question or answers empty"] += 1
                continue
            key = text.casefold()
            if key in seen:
                dropped["same question in another list (answers merged)"] += 1
                old = seen[key]["answers"]
                old += [a for a in answers if a not in old]
                continue
            seen[key] = {"instruction": text, "input": "", "output": answers[0], "answers": answers,
                         "category": category}  # fmt: skip
    for key, record in seen.items():
        yield key, record


# --------------------------------------------------------------------------- sharegpt


def sharegpt(folder: Path, dropped: Dropped) -> Items:
    """``{"id", "messages"}`` from the complete records of the truncated JSON array.

    The export cuts long chats into parts (``ID_0``, ``ID_1``, ...): a part may begin with the
    model's reply to the previous part and end with an unanswered question. Those edge turns
    are trimmed so each record is a conversation a chat template accepts that ends with the
    assistant; records that still are not are left out (counted by reason)."""
    from nlpkit.data.json_array import Tail, iter_array

    path = folder / "sharegpt.json"
    tail = Tail()
    with open(path, "rb") as f:
        for _line, item in iter_array(f, str(path), tail):
            if not isinstance(item, dict) or not isinstance(item.get("conversations"), list):
                dropped["not a conversation record"] += 1
                continue
            ident = str(item.get("id", ""))
            record: Record = {"id": ident, "conversations": _trim(item["conversations"], dropped)}
            bad = problems(record, "sharegpt")
            if bad:
                dropped[_reason(bad[0])] += 1
                continue
            messages = [{"role": ROLE_OF[t["from"]], "content": t["value"]} for t in record["conversations"]]
            yield ident.rsplit("_", 1)[0], {"id": ident, "messages": messages}
    if tail.line is not None:
        dropped["incomplete last record (the file is cut off)"] += 1


def _trim(turns: list[Any], dropped: Dropped) -> list[Any]:
    """Drop leading model turns (after an optional system turn) and a trailing user turn."""

    def role(turn: Any) -> str | None:
        return ROLE_OF.get(str(turn.get("from"))) if isinstance(turn, dict) else None

    start = 1 if turns and role(turns[0]) == "system" else 0
    body = list(turns[start:])
    while body and role(body[0]) == "assistant":
        dropped["leading model turn, the reply to the previous part (trimmed)"] += 1
        body.pop(0)
    if body and role(body[-1]) == "user":
        dropped["unanswered last question (trimmed)"] += 1
        body.pop()
    return turns[:start] + body


def _reason(problem: str) -> str:
    """A problem message without its position, to count alike problems together."""
    if problem.startswith("roles "):
        return "roles that no chat template accepts"
    return re.sub(r"\[\d+\]", "[i]", problem)


# --------------------------------------------------------------------------- chatterbot


def _chatterbot_conversations(folder: Path, dropped: Dropped) -> Iterator[tuple[str, str, list[str]]]:
    for path in sorted(folder.glob("*.yml")):
        data = _yaml(path)
        categories = data.get("categories") if isinstance(data, dict) else None
        category = categories[0] if isinstance(categories, list) and categories else path.stem
        for conv in data.get("conversations", []) if isinstance(data, dict) else []:
            lines = [" ".join(s.split()) for s in conv] if isinstance(conv, list) else []
            if len(lines) < 2 or not all(isinstance(s, str) and s for s in lines):
                dropped["conversation with fewer than two turns or an empty one"] += 1
                continue
            yield lines[0].casefold(), category, lines


def chatterbot(folder: Path, dropped: Dropped) -> Items:
    """``{"messages", "category"}``: the statements alternate user / assistant; a final
    statement nobody answers is trimmed so each conversation ends with the assistant."""
    for key, category, lines in _chatterbot_conversations(folder, dropped):
        if len(lines) % 2:
            dropped["unanswered last statement (trimmed, conversation kept)"] += 1
            lines = lines[:-1]
        roles = ("user", "assistant")
        messages = [{"role": roles[i % 2], "content": s} for i, s in enumerate(lines)]
        yield key, {"messages": messages, "category": category}


def chatterbot_pairs(folder: Path, dropped: Dropped) -> Items:
    """Every statement and the one answering it, as ``{"instruction", "input": "", "output",
    "category"}`` (ChatterBot learns the same pairs); a conversation's pairs share its split."""
    for key, category, lines in _chatterbot_conversations(folder, dropped):
        for prompt, reply in itertools.pairwise(lines):
            yield key, {"instruction": prompt, "input": "", "output": reply, "category": category}


# --------------------------------------------------------------------------- rotten tomatoes


def _rotten_rows(folder: Path, dropped: Dropped) -> Iterator[tuple[str, str, str]]:
    import bz2

    path = folder / "rotten_tomatoes_corpus_full.csv.bz2"
    try:
        with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f):
                text, label, movie = (row.get(k) or "" for k in ("text", "category", "movie_name"))
                text = " ".join(text.split())
                if not text or not movie or label not in ("fresh", "rotten", "plot"):
                    dropped["empty snippet or no movie or label"] += 1
                    continue
                yield movie, label, text
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"unreadable CSV ({e})", where=str(path)) from None


def rotten_tomatoes(folder: Path, dropped: Dropped) -> Items:
    """``{"text", "label": "fresh" | "rotten" | "plot", "movie"}``, split by movie."""
    for movie, label, text in _rotten_rows(folder, dropped):
        yield movie, {"text": text, "label": label, "movie": movie}


def movie_title(slug: str) -> str:
    """``gatekeeper_the`` -> ``The Gatekeeper``; ``d%e9rive...`` has Latin-1 escapes."""
    from urllib.parse import unquote

    words = unquote(slug, encoding="latin-1").split("_")
    if len(words) > 1 and words[-1] == "the":
        words = ["the", *words[:-1]]
    return " ".join(w[:1].upper() + w[1:] for w in words if w)


def review_prompt(slug: str) -> str:
    return f'Write a short review of the movie "{movie_title(slug)}".'


def rotten_reviews(folder: Path, dropped: Dropped) -> Items:
    """``{"instruction": "Write a short review of the movie ...", "input": "", "output": snippet,
    "label", "movie"}`` for every fresh and rotten snippet (supervised fine-tuning data)."""
    for movie, label, text in _rotten_rows(folder, dropped):
        if label == "plot":
            dropped["plot summaries (not reviews)"] += 1
            continue
        yield (
            movie,
            {
                "instruction": review_prompt(movie),
                "input": "",
                "output": text,
                "label": label,
                "movie": movie,
            },
        )


def rotten_prompts(folder: Path, dropped: Dropped) -> Items:
    """``{"prompt": "Write a short review of the movie ...", "movie"}``, once per reviewed movie."""
    seen = set()
    for movie, label, _ in _rotten_rows(folder, dropped):
        if label != "plot" and movie not in seen:
            seen.add(movie)
            yield movie, {"prompt": review_prompt(movie), "movie": movie}


def rotten_preference(folder: Path, dropped: Dropped) -> Items:
    """``{"prompt", "chosen", "rejected", "movie"}``: per movie, its i-th fresh snippet (chosen)
    against its i-th rotten one (rejected), in file order; each snippet is used once, so a
    movie gives min(fresh, rotten) pairs and the surplus is counted as unpaired."""
    fresh: dict[str, list[str]] = collections.defaultdict(list)
    rotten: dict[str, list[str]] = collections.defaultdict(list)
    for movie, label, text in _rotten_rows(folder, dropped):
        if label != "plot":
            (fresh if label == "fresh" else rotten)[movie].append(text)
    for movie in sorted(fresh.keys() | rotten.keys()):
        good, bad = fresh.get(movie, []), rotten.get(movie, [])
        if len(good) != len(bad):
            dropped["snippets without a partner of the other label"] += abs(len(good) - len(bad))
        for chosen, rejected in zip(good, bad, strict=False):
            if chosen == rejected:
                dropped["pairs whose two snippets are the same text"] += 1
                continue
            yield (
                movie,
                {"prompt": review_prompt(movie), "chosen": chosen, "rejected": rejected, "movie": movie},
            )


def rotten_preference_chat(folder: Path, dropped: Dropped) -> Items:
    """The pairs of ``rotten_preference`` in TRL's conversational shape."""
    from nlpkit.data.shapes import convert

    for key, record in rotten_preference(folder, dropped):
        yield key, convert(record, "preference", "preference-chat")


# --------------------------------------------------------------------------- lexicons, mt-bench


def _table_lines(path: Path) -> Iterator[tuple[str, list[str]]]:
    try:
        with open(path, encoding="utf-8", newline="") as f:
            for lineno, line in enumerate(f, 1):
                line = line.rstrip("\r\n")
                if line.strip():
                    yield f"{path}:{lineno}", line.split("\t")
    except UnicodeDecodeError as e:
        raise DataError(f"invalid UTF-8 ({e.reason})", where=str(path)) from None


def vader_lexicon(folder: Path, dropped: Dropped) -> Items:
    """``{"text": token, "label": mean rating, "std", "ratings": the 10 raters' -4..4}``."""
    import json

    for where, cols in _table_lines(folder / "vader_lexicon.txt"):
        try:
            token, mean, std, ratings = cols[0], float(cols[1]), float(cols[2]), json.loads(cols[3])
        except (IndexError, ValueError):
            raise DataError("expected TOKEN<TAB>MEAN<TAB>STD<TAB>[RATINGS]", where=where) from None
        yield token, {"text": token, "label": mean, "std": std, "ratings": ratings}


def afinn(folder: Path, dropped: Dropped) -> Items:
    """``{"text": word or phrase, "label": score -5..5}``."""
    for where, cols in _table_lines(folder / "AFINN-en-165.txt"):
        try:
            word, score = cols[0], int(cols[1])
        except (IndexError, ValueError):
            raise DataError("expected WORD<TAB>SCORE", where=where) from None
        yield word, {"text": word, "label": score}


def mt_bench(folder: Path, dropped: Dropped) -> Items:
    """``{"prompt": first turn, "turns", "category", "question_id"}`` (evaluation: all test)."""
    from nlpkit.io.records import read_records

    for _where, record in read_records(
        [str(folder / "question.jsonl")], field="turns", fmt="jsonl", string=False
    ):
        turns = record.get("turns")
        if not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns):
            dropped["question without its turns"] += 1
            continue
        yield str(record.get("question_id")), {"prompt": turns[0], **record}
