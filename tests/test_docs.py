"""completions/ and man/ are generated from the CLI; regenerate with `make docs`."""

from __future__ import annotations

from pathlib import Path

import pytest

from nlpkit.cli.docs import expected_files

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("path", sorted(expected_files(ROOT)), ids=lambda p: p.name)
def test_generated_file_is_current(path: Path) -> None:
    assert path.is_file(), f"{path} missing: run `make docs`"
    assert path.read_text() == expected_files(ROOT)[path], f"{path} is stale: run `make docs`"


def test_man_page_has_the_required_sections() -> None:
    text = (ROOT / "man" / "nlpkit.1").read_text()
    for section in ("EXIT STATUS", "ENVIRONMENT", "FILES", "EXAMPLES", "COMMANDS"):
        assert f".SH {section}" in text
    assert "nlpkit analogy king \\- man + woman" in text and "0 3 * * *" in text
