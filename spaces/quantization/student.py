"""The quantization page's classifiers that are trained rather than downloaded: the default classifier, and a
distilled student of any classifier (half its layers), compared beside its quantized variants.

    source = default_classifier(progress, stop)            # the newest saved classifier, else trains one (~3 min)
    folder = student_folder(source.location, progress, stop)  # a distilled student, trained once and stored
    folder = student_folder(source.location, progress, stop, max_steps=4, train_size=64)  # tests: tiny budgets

Both train with the fine-tuning page's `train()` (spaces/finetune/train.py): the default classifier with the
page's own PAGE_DEFAULTS on the offline MiniLM, saved as `local:minilm-movies` so it survives a restart; the
student with DistilBERT's recipe (the teacher's layers 0, 2, 4 of 6 and its head, then the teacher's soft labels
mixed with the true ones on the movie sentences). A student is stored under
PLAYGROUND_HOME/quantization/builds/, keyed by the teacher's files and the training settings, written to a
temporary folder and renamed: never half a student, and a second call returns at once. Stop ends training at
the next step and raises `common.Stopped`; nothing is saved then.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from shared.jobs import Progress
from shared.registry import MANIFEST, ModelSource
from shared.store import write_folder
from spaces.finetune.train import PAGE_DEFAULTS, TrainConfig
from spaces.quantization.common import Stopped, check_stop, report

DEFAULT_NAME = "minilm-movies"  # local:<name> of the default classifier
STUDENT_INFO = "student.json"  # written last into a student's folder: its training settings and results
STUDENT_VERSION = 1  # bump when the student's recipe changes in a way its settings do not show: students retrain

# The student's training: as the fine-tuning page's defaults (embeddings frozen, every kept layer trains), with
# the teacher's soft labels; 240 steps of 32 sentences (90% of an epoch). Measured on 2 CPU cores with the MiniLM
# teacher trained with PAGE_DEFAULTS: movie test accuracy 83.8% for the 3-layer student against the teacher's
# 83.1%, at 1.97x the teacher's speed (batch 1, one thread); the goal was within 2 points at >= 1.8x.
STUDENT_DEFAULTS = TrainConfig(method="freeze", freeze_layers=0, learning_rate=2e-4, max_steps=240, epochs=1.0,
                               distill_temperature=2.0, distill_alpha=0.5)
HUB_PATTERNS = ["*.json", "*.safetensors", "*.bin", "*.txt", "*.model"]  # a hub teacher's weights and tokenizer


def builds_dir() -> Path:
    from shared.settings import read_settings

    return read_settings().home / "quantization" / "builds"


@contextlib.contextmanager
def stoppable_file_lock(path: Path, stop: threading.Event | None, progress: Progress | None,
                        waiting: str) -> Iterator[None]:
    """Hold an exclusive lock on `path` across processes (the page measures each variant in a process of its own,
    and two may want the same training); while another holds it, say `waiting` and keep honouring Stop (which
    shared/assets.file_lock, made for builds of seconds, does not)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        said = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not said:
                    report(progress, 0.0, waiting)
                    said = True
                check_stop(stop)
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def training_events(progress: Progress | None, stop: threading.Event | None, what: str) -> Callable[[dict], None]:
    """train()'s `on_event` callback: reports steps as progress (training is the first 90%, testing the rest),
    and raises Stopped as soon as `stop` is set, so a stopped training skips testing and saves nothing."""

    def on_event(event: dict) -> None:
        check_stop(stop)
        kind = event["type"]
        if kind == "step":
            report(progress, 0.9 * event["step"] / event["total_steps"],
                   f"training {what}: step {event['step']}/{event['total_steps']} (loss {event['loss']:.3f}, "
                   f"{event['eta']:.0f} s left)")
        elif kind == "eval":
            report(progress, 0.9, f"training {what}: validation accuracy {event['accuracy']:.3f} at step "
                                  f"{event['step']}")
        elif kind == "test":
            report(progress, 0.95, f"testing {what}: {event['domain']} accuracy {event['accuracy']:.3f}")

    return on_event


def save_classifier(results: dict, folder: Path) -> None:
    """Write a trained classifier from train()'s results as an ordinary transformers folder (LoRA merged into
    the weights), with its tokenizer, label names and a `training.json` of the run (without the history)."""
    config: dict = results["config"]
    model = results["model"]
    if hasattr(model, "merge_and_unload"):  # a LoRA run: one plain model, as every variant expects
        import copy

        model = copy.deepcopy(model).merge_and_unload()
    id2label = dict(enumerate(config["label_names"]))
    model.config.id2label, model.config.label2id = id2label, {v: k for k, v in id2label.items()}
    model.save_pretrained(folder, safe_serialization=True)
    results["tokenizer"].save_pretrained(folder)
    summary = {k: v for k, v in results.items() if k not in ("model", "tokenizer", "history")}
    (folder / "training.json").write_text(json.dumps(summary, indent=1))


def default_classifier(progress: Progress | None = None, stop: threading.Event | None = None) -> ModelSource:
    """The classifier the page compares when the visitor picks none: `local:minilm-movies`, the fine-tuning page's
    defaults trained on the offline MiniLM (about 3 minutes on 2 cores), trained the first time and saved, so the
    next call (and the next start) reuses it. Other saved classifiers (the visitor's own, from the fine-tuning
    page) are offered by name in the page's list; the default is always this one, so its figures are comparable."""
    from shared.registry import local_names, models_dir, register_local, resolve, save_local_model
    from spaces.finetune.train import train

    # 1. Trained here before (this process, or an earlier start).
    if DEFAULT_NAME in [name.removeprefix("local:") for name in local_names("classifier")]:
        return resolve("classifier", "local:" + DEFAULT_NAME)
    # 2. None: train one, unless another process is doing it (then wait, and take what it saved).
    with stoppable_file_lock(builds_dir().parent / f".{DEFAULT_NAME}.lock", stop, progress,
                   "waiting for another process that trains the default classifier"):
        saved = models_dir() / DEFAULT_NAME
        if (saved / MANIFEST).is_file():  # saved by another process after this one read the models folder
            return resolve("classifier", register_local(DEFAULT_NAME, saved, "classifier"))
        check_stop(stop)
        report(progress, 0.0, "no saved classifier: training the fine-tuning page's defaults on MiniLM")
        config = dataclasses.replace(PAGE_DEFAULTS, output_dir="")
        results = train(config, on_event=training_events(progress, stop, "the default classifier"), stop=stop)
        if results["stopped"]:
            raise Stopped("stopped")
        # 3. Save it for the classifier role: registered now, offered again after a restart.
        def write(folder: Path) -> None:
            save_classifier(results, folder)

        accuracy = results["test_accuracy"].get("movies", 0.0)
        label = save_local_model(DEFAULT_NAME, "classifier", write, source_run=f"quantization page default: "
                                 f"PAGE_DEFAULTS, movies test accuracy {accuracy:.4f}")
    report(progress, 1.0, f"saved the default classifier as {label}")
    return resolve("classifier", label)


def student_settings(teacher_folder: Path, overrides: dict) -> TrainConfig:
    """The student's TrainConfig: STUDENT_DEFAULTS, half the teacher's layers, then `overrides` (checked)."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown training settings {unknown}; they must be TrainConfig fields: {sorted(fields)}")
    if "teacher" in overrides or "output_dir" in overrides:
        raise ValueError("teacher and output_dir are chosen by student_folder itself")
    teacher_config = json.loads((teacher_folder / "config.json").read_text())
    layers = teacher_config.get("num_hidden_layers") or teacher_config.get("n_layers")
    if not layers:
        raise ValueError(f"{teacher_folder} has no num_hidden_layers in its config.json: not a BERT-family classifier")
    config = dataclasses.replace(STUDENT_DEFAULTS, teacher=str(teacher_folder), student_layers=max(1, layers // 2))
    config = dataclasses.replace(config, **overrides)
    config.check()
    return config


def student_key(teacher_folder: Path, config: TrainConfig) -> str:
    """A key for a student: the teacher's files (as shared/onnx_lm.fingerprint reads them) and every training
    setting but where it is written."""
    from shared.onnx_lm import fingerprint

    settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("output_dir", "label_names")}
    text = json.dumps([STUDENT_VERSION, fingerprint(teacher_folder, "student"), settings], sort_keys=True,
                      default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def student_folder(teacher_location: str, progress: Progress | None = None, stop: threading.Event | None = None,
                   **overrides) -> Path:
    """A distilled student of the classifier at `teacher_location` (a folder the registry resolved, or a hub
    id): half its layers, trained on the movie sentences with the teacher's soft labels, stored as an ordinary
    transformers folder with its tokenizer and `student.json`. Trained once per teacher and settings; later
    calls return the stored folder at once. `overrides` are TrainConfig fields (tests pass tiny budgets)."""
    from shared.loaders import local_folder
    from spaces.finetune.train import train

    # 1. The teacher's files (a hub teacher is downloaded once), the settings, and the key they make.
    teacher_folder = Path(local_folder(teacher_location, HUB_PATTERNS)).resolve()
    if not (teacher_folder / "config.json").is_file():
        raise ValueError(f"{teacher_location!r} is not a transformers model folder (no config.json)")
    config = student_settings(teacher_folder, overrides)
    key = student_key(teacher_folder, config)
    target = builds_dir() / f"student-{teacher_folder.name}-{config.student_layers}l-{key}"
    if (target / STUDENT_INFO).is_file():
        report(progress, 1.0, f"distilled student: stored in {target.name}")
        return target
    # 2. Train it, unless another process is already doing so (then wait and take its folder).
    with stoppable_file_lock(target.parent / f".{target.name}.lock", stop, progress,
                   "waiting for another process that trains the same student"):
        if (target / STUDENT_INFO).is_file():
            return target
        check_stop(stop)
        report(progress, 0.0, f"distilling a {config.student_layers}-layer student of {teacher_folder.name}")
        results = train(config, on_event=training_events(progress, stop, "the distilled student"), stop=stop)
        if results["stopped"]:
            raise Stopped("stopped")
        # 3. Write it into a temporary folder beside the builds, then rename: never half a student.
        def write(scratch: Path) -> None:
            save_classifier(results, scratch)
            info = {"teacher": str(teacher_folder), "student_layers": config.student_layers,
                    "test_accuracy": results["test_accuracy"], "train_seconds": results["train_seconds"],
                    "steps": results["steps"], "best_step": results["best_step"],
                    "best_validation_accuracy": results["best_validation_accuracy"], "config": results["config"]}
            (scratch / STUDENT_INFO).write_text(json.dumps(info, indent=1))

        write_folder(target, write, STUDENT_INFO)  # a folder without STUDENT_INFO (left by a crash) is replaced
    report(progress, 1.0, f"distilled student: trained in {results['train_seconds']:.0f} s, stored")
    return target


def student_info(folder: Path) -> dict:
    """What `student_folder` recorded about a student: teacher, layers, test accuracy, training settings."""
    return json.loads((Path(folder) / STUDENT_INFO).read_text())
