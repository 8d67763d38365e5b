"""The small CLIP's training figures on the page show what the run measured: planted events in, the same numbers
out (status line, validation table, curves, similarity matrix). No server.

    .venv/bin/python -m pytest tests/retrieval/test_figures.py
"""

from __future__ import annotations

from spaces.retrieval import ui
from spaces.retrieval.train import PAGE_DEFAULTS


def planted_run() -> ui.TrainingRun:
    run = ui.TrainingRun(PAGE_DEFAULTS)
    for step, loss, scale in ((1, 4.5, 14.3), (2, 3.25, 15.0)):
        run.record({"type": "step", "step": step, "total_steps": 40, "loss": loss, "logit_scale": scale, "elapsed": 1.0})
    run.record({"type": "eval", "step": 2, "elapsed": 12.4, "accuracy": 0.6120, "paraphrases": 0.4380, "best": 0.6120})
    run.record({"type": "similarity", "step": 2, "matrix": [[0.9, 0.1], [0.2, 0.8]], "images": ["a", "b"],
                "texts": ["x", "y"]})
    run.record({"type": "test", "zero_shot_templates": 0.871, "zero_shot_paraphrases": 0.802,
                "zero_shot_unseen": 0.733, "unseen_text_to_image@1": 0.655})
    return run


def test_the_status_line_and_validation_table_show_the_planted_figures():
    """Seen to fail with the unseen figure read from the paraphrases' key."""
    run = planted_run()
    text = ui.training_text(run, "mine")
    assert "step 2 of about 40, loss 3.250" in text
    assert "validation zero-shot 61.2% with the training templates, 43.8% with paraphrases" in text
    assert "87.1% (training templates), 80.2% (development paraphrases), 73.3% (unseen test wordings)" in text
    assert "65.5% of the time" in text
    loss, scale, similarity, rows = ui.training_outputs(run)
    assert rows == [[2, 12, 0.612, 0.438]]
    assert similarity is not None and loss is not None and scale is not None


def test_the_evaluation_rows_put_each_set_in_its_own_column():
    """Seen to fail with the unseen column filled from the paraphrases."""
    results = {"zero_shot_templates": 0.9, "zero_shot_paraphrases": 0.8, "zero_shot_unseen": 0.7,
               "zero_shot_single_paraphrase": 0.6, "zero_shot_single_unseen": 0.5}
    for _, key in ui.EVALUATION_ROWS:
        if key.startswith(("text_to", "image_to")):
            results.update({f"captions_{key}": 0.41, f"paraphrases_{key}": 0.42, f"unseen_{key}": 0.43})
    rows = {row[0]: row[1:] for row in ui.evaluation_rows(results)}
    assert rows["zero-shot accuracy, ensembled wordings"] == [0.9, 0.8, 0.7]
    assert rows["zero-shot accuracy, one wording at a time"] == [None, 0.6, 0.5]
    assert rows["text → image recall@5"] == [0.41, 0.42, 0.43]
    assert rows["image → text recall@1"] == [0.41, 0.42, 0.43]
