"""Training runs in the background, and what a learner does with a finished one (no Gradio).

A run is `train.train()` as a background job (shared/jobs.py, name "finetune-train", keyed by the visitor's
session); its events fill the run's live history, which the page polls. Stopping sets the job's Event:
training ends at the next step and keeps its best checkpoint. A failed run keeps its error (the trace goes
to the server log). Runs live in this process (one table per session on the page); their files under
PLAYGROUND_HOME/runs.
"""

from __future__ import annotations

import itertools
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from shared import jobs
from shared.cache import short_reason
from shared.registry import save_local_model
from shared.settings import read_settings
from spaces.finetune.train import TrainConfig, train

JOB_NAME = "finetune-train"

MAX_RUNS_KEPT = 20  # finished runs kept in memory (their models are small, but not free)
_counter = itertools.count(1)


@dataclass
class Run:
    id: str
    config: TrainConfig
    job: jobs.Job | None = None  # the training thread; None until started
    trainable: int = 0
    total: int = 0
    step: int = 0
    total_steps: int = 0
    eta: float = 0.0
    elapsed: float = 0.0  # seconds of the training loop at the last step (what "wall s" shows while it runs)
    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    accuracies: list[float] = field(default_factory=list)
    test_accuracy: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.time)

    @property
    def folder(self) -> Path:
        return read_settings().home / "runs" / self.id

    @property
    def status(self) -> str:
        """starting (loading model and data) | running | done | stopped | failed"""
        if self.job is not None and self.job.finished:
            return self.job.status
        return "running" if self.total else "starting"

    @property
    def finished(self) -> bool:
        return self.status in ("done", "stopped", "failed")

    @property
    def stop(self) -> threading.Event:
        return self.job.stop

    @property
    def results(self) -> dict | None:
        return self.job.result if self.job is not None else None

    @property
    def error(self) -> str:
        return short_reason(self.job.error) if self.job is not None and self.job.error else ""

    def record(self, event: dict) -> None:
        kind = event["type"]
        if kind == "parameters":
            self.trainable, self.total = event["trainable"], event["total"]
        elif kind == "step":
            self.step, self.total_steps, self.eta = event["step"], event["total_steps"], event["eta"]
            self.elapsed = event["elapsed"]
            self.steps.append(event["step"])
            self.losses.append(event["loss"])
        elif kind == "eval":
            self.eval_steps.append(event["step"])
            self.accuracies.append(event["accuracy"])
        elif kind == "test":
            self.test_accuracy[event["domain"]] = event["accuracy"]

    def summary(self) -> dict:
        results = self.results or {}
        return {
            "run": self.id, "method": self.config.method, "status": self.status,
            "trainable params": self.trainable, "trainable %": round(100 * self.trainable / self.total, 2) if self.total else 0,
            # The training loop's seconds, one meaning throughout: at the last step while it runs (loading the
            # model and data is not counted), the whole loop with its validations once it ended.
            "wall s": round(results["train_seconds"] if results else self.elapsed, 1),
            "steps": self.step, "samples/s": round(results["samples_per_second"], 1) if results else None,
            "best val acc": round(max(self.accuracies), 4) if self.accuracies else None,
            **{f"test {k}": round(v, 4) for k, v in self.test_accuracy.items()},
        }


RUNS: dict[str, Run] = {}
_runs_lock = threading.Lock()


def start_run(config: TrainConfig, key: str = "") -> Run:
    """Check the config, then train as a background job of session `key`; returns at once with the live Run."""
    config.check()
    run = Run(id=f"run-{next(_counter)}-{config.method}", config=config)
    config.output_dir = str(run.folder)

    def work(stop: threading.Event) -> dict:
        return train(config, on_event=run.record, stop=stop)

    with _runs_lock:
        RUNS[run.id] = run
        finished = [r for r in RUNS.values() if r.finished]
        for old in finished[: max(0, len(finished) - MAX_RUNS_KEPT)]:
            del RUNS[old.id]
        run.job = jobs.start(work, name=JOB_NAME, key=key)
    return run


def get_run(run_id: str | None, finished: bool = False) -> Run:
    run = RUNS.get(run_id or "")
    if run is None:
        raise ValueError("Choose a run first: train one, then pick it from the list.")
    if finished and run.status not in ("done", "stopped"):
        raise ValueError(f"{run.id} has no trained model yet (status: {run.status}).")
    return run


def stop_runs(key: str) -> list[Run]:
    """Stop session `key`'s training at the next step and wait until each run has tested and saved its best
    checkpoint; returns the runs stopped."""
    with _runs_lock:
        running = [r for r in RUNS.values() if r.job is not None and r.job.key == (key or jobs.NO_SESSION)
                   and not r.job.finished]
    jobs.stop(key, JOB_NAME)
    for run in running:
        run.job.join()
    return running


def predict(run_id: str, text: str) -> dict[str, float]:
    """Class probabilities of one sentence under a finished run's best model."""
    import torch

    run = get_run(run_id, finished=True)
    text = (text or "").strip()
    if not text:
        raise ValueError("Type a sentence to classify.")
    model, tokenizer = run.results["model"], run.results["tokenizer"]
    encoded = tokenizer(text[:5000], truncation=True, max_length=run.config.max_length, return_tensors="pt")
    encoded = {k: v.to(next(model.parameters()).device) for k, v in encoded.items()}
    model.eval()
    with torch.no_grad():
        probabilities = model(**encoded).logits.float().softmax(-1)[0].tolist()
    return dict(zip(run.config.label_names, probabilities))


def merged_folder(run_id: str) -> Path:
    """An ordinary transformers folder of the run's model: LoRA adapters merged into the base weights."""
    run = get_run(run_id, finished=True)
    target = run.folder / "model"
    if (target / "config.json").exists():
        return target
    model = run.results["model"]
    if run.config.method == "lora":
        import copy

        model = copy.deepcopy(model).merge_and_unload()
    model.save_pretrained(target, safe_serialization=True)
    run.results["tokenizer"].save_pretrained(target)
    return target


def save_to_cache(run_id: str, name: str) -> str:
    """Save the run's (merged) model as `local:<name>` for the classifier role; it is offered again after a
    restart (shared/registry.py save_local_model)."""
    source = merged_folder(run_id)

    def write(folder: Path) -> None:
        shutil.copytree(source, folder, dirs_exist_ok=True)

    return save_local_model((name or "").strip(), "classifier", write, source_run=run_id)


def zip_run(run_id: str) -> Path:
    """A zip of the run's merged model, adapter (LoRA) and results.json, for download."""
    run = get_run(run_id, finished=True)
    merged_folder(run_id)
    archive = shutil.make_archive(str(run.folder.parent / run.id), "zip", root_dir=run.folder)
    return Path(archive)


def export_onnx(run_id: str) -> Path:
    """Export the run's merged model to ONNX through optimum (shared/onnx_export.py: validated against PyTorch,
    into the run's folder, once); returns a zip of the ONNX folder."""
    from shared import onnx_export

    run = get_run(run_id, finished=True)
    source = merged_folder(run_id)
    target = onnx_export.export(source, "text-classification", name=run.id, target=run.folder / "onnx")
    return Path(shutil.make_archive(str(run.folder.parent / f"{run.id}-onnx"), "zip", root_dir=target))
