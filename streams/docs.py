"""Generate the README's configuration table from :class:`streams.settings.Settings`.

``python -m streams.docs`` prints it; ``python -m streams.docs --write`` replaces the block between the
``<!-- settings-table -->`` markers in README.md. A unit test fails when README.md is out of date.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .settings import Settings

BEGIN, END = "<!-- settings-table:begin -->", "<!-- settings-table:end -->"


def settings_table() -> str:
    rows = ["| env var | default | description |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default
        if hasattr(default, "get_secret_value"):
            default = "(secret)"
        shown = "" if default is None else f"`{default}`"
        rows.append(f"| `RECO_{name.upper()}` | {shown} | {field.description} |")
    return "\n".join(rows)


def render_readme(text: str) -> str:
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{settings_table()}\n{END}{tail}"


def main() -> int:
    readme = Path(__file__).resolve().parent.parent / "README.md"
    if "--write" in sys.argv:
        readme.write_text(render_readme(readme.read_text()))
    else:
        print(settings_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
