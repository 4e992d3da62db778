"""The published JSON Schema of a study file (draft 2020-12), from the study model's input form.

Editors use it to complete and check study files; it describes what a user may write (a value
or a list for an axis, "10s" or 10 for a duration), not the normal form `Study.to_dict()`
keeps. Cross-field rules (exactly one of rates / concurrencies / sweep / search, equal zip
lengths, the grid and trial bounds) are the loader's, not the schema's.

Regenerate the committed copy after changing a model:

    .venv/bin/python -m aifb.experiment.schema recipes/study-schema.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from aifb.experiment.study import Study

__all__ = ["json_schema_text", "study_json_schema", "write_json_schema"]


def study_json_schema() -> dict[str, Any]:
    """The JSON Schema of a study file, as committed in recipes/study-schema.json."""
    schema = Study.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://aifb.dev/schemas/study.json"
    return schema


def json_schema_text() -> str:
    return json.dumps(study_json_schema(), indent=2, sort_keys=True) + "\n"


def write_json_schema(path: Path) -> None:
    path.write_text(json_schema_text(), encoding="utf-8")


if __name__ == "__main__":  # python -m aifb.experiment.schema recipes/study-schema.json
    write_json_schema(Path(sys.argv[1] if len(sys.argv) > 1 else "recipes/study-schema.json"))
