"""The fine-tuning page's figures against planted truths (issue 22), on one short run of the real MiniLM.

The data is planted: sentences whose sentiment is one obvious word ("a wonderful film", "a dreadful film"). A
classifier that learns anything must score high on it; the same test sentences with their labels swapped must
score 1 minus that (about 0), so the two test columns must differ. Each training step is slowed by a known delay
(a forward pre-hook that sleeps while the model trains), which the wall time, samples/s and the time left must
show. Then what the page shows of the run (the comparison table's row, the progress line, the class
probabilities) must carry those figures.

Seen to fail: with `evaluate` in spaces/finetune/train.py counting `labels == labels`, the swapped column reads 1.0;
with every test domain evaluated on the validation loader, the two columns are equal; with train_seconds a
constant, the planted delay does not show in wall s and samples/s passes batch / delay; with samples/s over the
whole loop's time (as before issue 22), the planted validation delay lowers it; with samples counted as steps x
batch size (as before issue 22), the epoch's short batch is counted as full; with eta computed from the steps
left but not the time per step, it falls below the planted time left; with Run.summary's "trainable %" over the
trainable count, it reads 100; with "wall s" counted from the run's creation while it runs (as before issue
22), it includes loading the model and passes the loop's seconds.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from shared.assets import ensure
from spaces.finetune import logic, runs
from spaces.finetune import train as train_module
from spaces.finetune.train import LengthGroupedBatches, TrainConfig, create_model, train

POSITIVE = ("wonderful", "excellent", "great", "superb", "brilliant", "lovely")
NEGATIVE = ("terrible", "awful", "horrible", "dreadful", "boring", "dull")
TRAIN_TEMPLATES = ("a {} film", "the acting was {}", "{} from start to end", "what a {} story", "truly {}",
                   "the plot is {}")
TEST_TEMPLATES = ("an utterly {} movie", "the ending felt {}")
DELAY_S = 0.05  # planted per training step; only lower bounds (and the ceiling it implies) are asserted
VALIDATION_DELAY_S = 0.3  # planted per validation pass (one batch each): not training, so not in samples/s
STEPS, BATCH = 24, 16


def rows(templates) -> list[tuple[str, int]]:
    return [(t.format(w), label) for label, words in ((0, NEGATIVE), (1, POSITIVE)) for w in words for t in templates]


@pytest.fixture(scope="module")
def run_results():
    """One run: MiniLM, embeddings frozen (the page's default method), 24 steps of 16 planted sentences, each step
    slowed by DELAY_S; its events recorded by the page's own Run."""
    test = rows(TEST_TEMPLATES)
    dataset = logic.Dataset(train=rows(TRAIN_TEMPLATES), validation=test,
                            test={"planted": test, "swapped": [(text, 1 - label) for text, label in test]},
                            label_names=("negative", "positive"), description="planted sentiment words")
    config = TrainConfig(method="freeze", freeze_layers=0, learning_rate=3e-4, max_steps=STEPS, epochs=100,
                         batch_size=BATCH, max_length=16, eval_every=8, warmup_ratio=0.0, seed=0)
    run = runs.Run(id="run-planted", config=config)
    events = []

    def record(event):
        events.append(event)
        run.record(event)

    location = str(ensure("all-minilm-l6-v2"))

    planted = {"on": True}

    def slow_down(module, inputs) -> None:
        if planted["on"]:
            time.sleep(DELAY_S if module.training else VALIDATION_DELAY_S)

    def slowed_model(*args, **kwargs):  # the page's own model, slower by a known delay a forward pass
        model = create_model(*args, **kwargs)
        model.register_forward_pre_hook(slow_down)
        return model

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_module, "create_model", slowed_model)
        results = train(config, dataset=dataset, location=location, on_event=record)
    planted["on"] = False
    run.row_while_running = run.summary()  # as the page's table shows it before the job has ended
    run.job = SimpleNamespace(finished=True, status="done", result=results, error=None)
    return run, results, events


def sentences_trained(train_rows, steps: int) -> int:
    """The sentences in the first `steps` batches the run's batch order gives (72 sentences are 4 batches of 16
    and one of 8 an epoch), counted here from the batches themselves."""
    batches = LengthGroupedBatches(train_rows, BATCH, seed=0)
    sizes = []
    while len(sizes) < steps:
        sizes += [len(batch) for batch in batches]
    return sum(sizes[:steps])


def test_accuracy_is_high_on_planted_words_and_near_zero_with_the_labels_swapped(run_results):
    run, results, _ = run_results
    planted, swapped = results["test_accuracy"]["planted"], results["test_accuracy"]["swapped"]
    assert planted >= 0.9 and swapped <= 0.1
    assert planted + swapped == pytest.approx(1.0)  # the same sentences: every right answer is wrong swapped
    assert results["best_validation_accuracy"] >= 0.9 and max(run.accuracies) == results["best_validation_accuracy"]
    assert run.eval_steps == [8, 16, 24] and run.step == STEPS == results["steps"]
    assert run.losses[-1] < run.losses[0]  # the loss plot: the planted words are learned


def test_the_planted_delay_shows_in_wall_time_samples_per_second_and_time_left(run_results):
    run, results, events = run_results
    assert results["train_seconds"] >= STEPS * DELAY_S
    assert results["samples_per_second"] <= BATCH / DELAY_S
    # samples/s is training throughput: the three validations (each slowed by VALIDATION_DELAY_S) are left out.
    assert results["validation_seconds"] >= 3 * VALIDATION_DELAY_S
    training_only = results["train_seconds"] - results["validation_seconds"]
    samples = sentences_trained(rows(TRAIN_TEMPLATES), STEPS)
    assert samples < STEPS * BATCH and results["samples"] == samples  # the short batches count what they hold
    assert results["samples_per_second"] * training_only == pytest.approx(samples)
    assert results["samples_per_second"] >= samples / (results["train_seconds"] - 3 * VALIDATION_DELAY_S)
    for event in (e for e in events if e["type"] == "step"):
        assert event["eta"] >= (STEPS - event["step"]) * DELAY_S
        assert event["elapsed"] >= event["step"] * DELAY_S
    assert run.eta == 0.0  # at the last step nothing is left


def test_the_comparison_row_and_the_progress_line_carry_the_runs_figures(run_results):
    from spaces.finetune import ui

    run, results, events = run_results
    row = run.summary()
    trainable, total = results["trainable_parameters"], results["total_parameters"]
    embeddings, _ = logic.encoder_parts(results["model"])
    assert total - trainable == sum(p.numel() for p in embeddings.parameters())  # only the embeddings froze
    assert row["trainable params"] == trainable and row["trainable %"] == round(100 * trainable / total, 2)
    assert 0 < row["trainable %"] < 100
    assert row["wall s"] == round(results["train_seconds"], 1) and row["steps"] == STEPS
    # While it ran, the same column showed the loop's seconds at its last step (not the time since the run was
    # created, which counts loading the model): one meaning, so the figure does not drop when the run ends.
    last_step = [e for e in events if e["type"] == "step"][-1]
    assert run.row_while_running["wall s"] == round(last_step["elapsed"], 1) <= row["wall s"]
    assert row["samples/s"] == round(results["samples_per_second"], 1)
    assert row["best val acc"] == round(results["best_validation_accuracy"], 4)
    assert row["test planted"] == round(results["test_accuracy"]["planted"], 4)
    assert row["test swapped"] == round(results["test_accuracy"]["swapped"], 4)
    line = ui.progress_text(run)
    assert f"step {STEPS} of {STEPS} (100%)" in line and f"last loss {run.losses[-1]:.3f}" in line
    assert f"best validation accuracy {results['best_validation_accuracy']:.3f}" in line
    assert (f"test planted {results['test_accuracy']['planted']:.3f}, "
            f"swapped {results['test_accuracy']['swapped']:.3f}") in line


def test_the_class_probabilities_follow_the_planted_words(run_results, monkeypatch):
    run, _, _ = run_results
    monkeypatch.setitem(runs.RUNS, run.id, run)
    good = runs.predict(run.id, "a superb film")
    bad = runs.predict(run.id, "a dreadful film")
    assert set(good) == {"negative", "positive"} and sum(good.values()) == pytest.approx(1.0)
    assert good["positive"] > 0.5 > bad["positive"]
