"""Labeled text uploaded as a CSV (`text` and `label` columns), checked before anything uses it: what the
fine-tuning page trains on and the prompting page's in-context-learning lab evaluates.

    rows, label_names = read_labeled_csv(path)   # [(text, label index)], ("negative", "positive")
"""

from __future__ import annotations

import csv
from pathlib import Path

MAX_UPLOAD_BYTES = 20 * 2**20
MAX_UPLOAD_ROWS = 200_000
MAX_TEXT_CHARS = 5_000  # longer texts are cut to this


def read_labeled_csv(path: str | Path, min_rows: int = 20, purpose: str = "to train and validate"
                     ) -> tuple[list[tuple[str, int]], tuple[str, ...]]:
    """Rows of an uploaded CSV with `text` and `label` columns, as (text, label index) with the label names in
    sorted order; labels may be words or numbers.

    Raises ValueError naming the problem: too large, not CSV, missing columns, empty rows, a single class, fewer
    than `min_rows` rows (`purpose` says what they are needed for).
    """
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_UPLOAD_BYTES:
        raise ValueError(f"The CSV is {size / 2**20:.1f} MiB; the limit is {MAX_UPLOAD_BYTES // 2**20} MiB.")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError("The file is not UTF-8 text: upload a CSV file with `text` and `label` columns.") from None
    try:
        reader = csv.DictReader(text.splitlines())
        columns = [c.strip().lower() for c in (reader.fieldnames or [])]
        rows = list(reader)
    except csv.Error as error:
        raise ValueError(f"The file is not a readable CSV: {error}") from None
    missing = [c for c in ("text", "label") if c not in columns]
    if missing:
        raise ValueError(f"The CSV needs the columns text and label; missing: {', '.join(missing)} "
                         f"(found: {', '.join(columns) or 'none'}).")
    if len(rows) > MAX_UPLOAD_ROWS:
        raise ValueError(f"The CSV has {len(rows):,} rows; the limit is {MAX_UPLOAD_ROWS:,}.")
    keys = {c.strip().lower(): c for c in reader.fieldnames}
    examples, empty = [], []
    for number, row in enumerate(rows, start=2):  # line 1 is the header
        sentence, label = (row.get(keys["text"]) or "").strip(), (row.get(keys["label"]) or "").strip()
        if not sentence or not label:
            empty.append(number)
            continue
        examples.append((sentence[:MAX_TEXT_CHARS], label))
    if empty:
        shown = ", ".join(map(str, empty[:10])) + (" ..." if len(empty) > 10 else "")
        raise ValueError(f"{len(empty)} row(s) have an empty text or label (lines {shown}); remove or fill them.")
    label_names = tuple(sorted({label for _, label in examples}))
    if len(label_names) < 2:
        raise ValueError(f"Every row has the same label ({label_names[0] if label_names else 'none'}): "
                         "a classifier needs at least two classes.")
    if len(examples) < min_rows:
        raise ValueError(f"The CSV has {len(examples)} labeled rows; at least {min_rows} are needed {purpose}.")
    index = {name: i for i, name in enumerate(label_names)}
    return [(sentence, index[label]) for sentence, label in examples], label_names
