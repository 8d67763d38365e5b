"""The distilled student and the default classifier: the student starts from the teacher's layers 0, 2, 4 and its
head; the distillation loss is KL(T) * T^2 mixed with cross-entropy; a few steps lower it; a student is trained
once and stored; Stop ends its training and saves nothing; a saved classifier is the default without training.

Tiny seeded classifiers of the real classes (BERT, DistilBERT) stand in for the teacher, with MiniLM's tokenizer;
the data are the real movie sentences. Seen to fail when the code they guard was broken: layers kept as 0, 1, 2;
the T^2 left out; KL taken the other way round; the cache key ignoring a setting; Stop ignored until training ends;
a student looking up `model`.
"""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import pytest
import torch

from shared import registry
from shared.assets import ensure
from spaces.finetune import logic
from spaces.finetune.train import (TrainConfig, command_line, create_student, distillation_loss, kept_layers,
                                   parse_args, train)
from spaces.quantization import student
from spaces.quantization.common import Stopped

TINY_DATA = {"train_size": 64, "validation_size": 16, "test_size": 16, "other_domain_size": 8, "batch_size": 16}


def tiny_classifier(kind: str, layers: int):
    """A small seeded classifier of a real class with MiniLM's vocabulary; its head is scaled up so that its
    predictions are confident and differ from sentence to sentence, as a fine-tuned teacher's do."""
    from transformers import (BertConfig, BertForSequenceClassification, DistilBertConfig,
                              DistilBertForSequenceClassification)

    torch.manual_seed(0)
    labels = {"id2label": {0: "negative", 1: "positive"}, "label2id": {"negative": 0, "positive": 1}}
    if kind == "bert":
        config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=128, initializer_range=0.2, **labels)
        model = BertForSequenceClassification(config)
    else:
        config = DistilBertConfig(vocab_size=30522, dim=32, n_layers=layers, n_heads=2, hidden_dim=64,
                                  max_position_embeddings=128, initializer_range=0.2, **labels)
        model = DistilBertForSequenceClassification(config)
    with torch.no_grad():
        model.classifier.weight.mul_(10)
    return model.eval()


@pytest.fixture(scope="module")
def assets_dir() -> Path:
    return ensure("sentiment").parent


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, assets_dir) -> Path:
    """A 6-layer tiny BERT classifier saved as a transformers folder with MiniLM's tokenizer."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("teacher")
    tiny_classifier("bert", 6).save_pretrained(folder)
    AutoTokenizer.from_pretrained(ensure("all-minilm-l6-v2")).save_pretrained(folder)
    return folder


@pytest.fixture
def home(tmp_path, monkeypatch, assets_dir) -> Path:
    """An empty PLAYGROUND_HOME (its offline assets linked from the real one) whose saved models the registry has
    not read yet; forgotten afterwards."""
    (tmp_path / "assets").symlink_to(assets_dir)
    monkeypatch.setenv("PLAYGROUND_HOME", str(tmp_path))
    monkeypatch.setattr(registry, "_local_models", {})
    monkeypatch.setattr(registry, "_restored_from", None)
    return tmp_path


def test_kept_layers_are_evenly_spaced_from_the_bottom():
    assert kept_layers(6, 3) == [0, 2, 4]  # DistilBERT's choice
    assert kept_layers(12, 6) == [0, 2, 4, 6, 8, 10]
    assert kept_layers(6, 6) == list(range(6)) and kept_layers(6, 1) == [0]
    with pytest.raises(ValueError, match="between 1 and the model's 6"):
        kept_layers(6, 7)


@pytest.mark.parametrize("kind, layers, kept", [("bert", 6, [0, 2, 4]), ("distilbert", 4, [0, 2])])
def test_the_student_starts_from_every_other_teacher_layer_and_its_head(kind, layers, kept):
    teacher = tiny_classifier(kind, layers)
    made = create_student(teacher, layers // 2)
    _, teacher_layers = logic.encoder_parts(teacher)
    _, student_layers = logic.encoder_parts(made)
    assert len(student_layers) == made.config.num_hidden_layers == layers // 2
    assert len(teacher_layers) == teacher.config.num_hidden_layers == layers  # the teacher is left whole
    for j, i in enumerate(kept):
        ours, theirs = student_layers[j].state_dict(), teacher_layers[i].state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    other_layer = teacher_layers[1].state_dict()
    assert not all(torch.equal(student_layers[1].state_dict()[k], other_layer[k]) for k in other_layer)
    assert torch.equal(made.classifier.weight, teacher.classifier.weight)
    assert torch.equal(made.base_model.embeddings.word_embeddings.weight,
                       teacher.base_model.embeddings.word_embeddings.weight)
    with torch.no_grad():  # a copy, not a view: training the student leaves the teacher as it was
        made.classifier.weight.add_(1)
    assert not torch.equal(made.classifier.weight, teacher.classifier.weight)


def test_distillation_loss_is_kl_at_temperature_times_t_squared_mixed_with_cross_entropy():
    student_logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    teacher_logits = torch.tensor([[0.0, 2.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1])
    temperature, alpha = 2.0, 0.25

    def softmax(row):
        exps = [math.exp(x / temperature) for x in row]
        return [e / sum(exps) for e in exps]

    kl = sum(sum(p * math.log(p / q) for p, q in zip(softmax(t), softmax(s)))
             for s, t in zip(student_logits.tolist(), teacher_logits.tolist())) / 2
    cross_entropy = (-math.log(math.exp(2) / (math.exp(2) + 1)) - math.log(math.e / (1 + math.e))) / 2
    expected = alpha * temperature**2 * kl + (1 - alpha) * cross_entropy
    assert distillation_loss(student_logits, teacher_logits, labels, temperature, alpha).item() == pytest.approx(
        expected, rel=1e-6)
    assert distillation_loss(student_logits, teacher_logits, labels, temperature, 0.0).item() == pytest.approx(
        cross_entropy, rel=1e-6)
    assert distillation_loss(teacher_logits, teacher_logits, labels, temperature, 1.0).item() == pytest.approx(
        0.0, abs=1e-7)


def test_distillation_settings_are_checked_and_round_trip_through_the_script_flags():
    config = TrainConfig(teacher="runs/teacher/model", student_layers=3, distill_temperature=4.0, distill_alpha=0.7)
    command = command_line(config)
    assert "--teacher runs/teacher/model --distill-temperature 4.0 --distill-alpha 0.7 --student-layers 3" in command
    assert parse_args(command.split("spaces.finetune.train")[1].split()) == config
    for bad, message in (({"distill_alpha": 1.5}, "alpha must be between 0 and 1"),
                         ({"distill_temperature": 0.0}, "temperature must be in"),
                         ({"student_layers": -1}, "student layers must be >= 0")):
        with pytest.raises(ValueError, match=message):
            TrainConfig(**bad).check()


def loss_on(model, teacher_model, rows, tokenizer, config: TrainConfig) -> float:
    """The distillation loss train() minimises, over `rows`, without dropout."""
    model.eval()
    encoded = tokenizer([text for text, _ in rows], padding=True, truncation=True, max_length=config.max_length,
                        return_tensors="pt")
    labels = torch.tensor([label for _, label in rows])
    with torch.no_grad():
        return distillation_loss(model(**encoded).logits, teacher_model(**encoded).logits, labels,
                                 config.distill_temperature, config.distill_alpha).item()


def test_a_few_steps_of_distillation_lower_the_distillation_loss(teacher):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    # `model` names no model: with a teacher, the student starts from the teacher and never looks it up.
    config = TrainConfig(model="local:not-used-with-a-teacher", teacher=str(teacher), student_layers=3,
                         method="freeze", freeze_layers=0, learning_rate=1e-3, max_steps=8, epochs=2, eval_every=8,
                         warmup_ratio=0.0, **TINY_DATA)
    dataset = logic.movie_dataset(64, 16, 16, seed=0, other_domain_size=8)
    teacher_model = AutoModelForSequenceClassification.from_pretrained(teacher).eval()
    tokenizer = AutoTokenizer.from_pretrained(teacher)
    before = loss_on(create_student(teacher_model, 3), teacher_model, dataset.train, tokenizer, config)
    results = train(config, dataset=dataset)
    trained = results["model"]
    after = loss_on(trained, teacher_model, dataset.train, tokenizer, config)
    assert results["steps"] == 8 and trained.config.num_hidden_layers == 3
    assert after < 0.8 * before, (before, after)
    # It trained the student made from the teacher: the frozen embeddings are still the teacher's.
    assert torch.equal(trained.bert.embeddings.word_embeddings.weight,
                       teacher_model.bert.embeddings.word_embeddings.weight)


def test_student_folder_trains_once_and_is_stored(teacher, home):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    texts: list[str] = []

    def progress(fraction: float, text: str) -> None:
        assert 0.0 <= fraction <= 1.0
        texts.append(text)

    budget = {**TINY_DATA, "max_steps": 2}
    folder = student.student_folder(str(teacher), progress, None, **budget)
    assert folder.parent == home / "quantization" / "builds"
    assert any("step 2/2" in text for text in texts)
    info = student.student_info(folder)
    assert info["student_layers"] == 3 and info["steps"] == 2 and set(info["test_accuracy"]) >= {"movies"}
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    assert model.config.num_hidden_layers == 3 and model.config.id2label == {0: "negative", 1: "positive"}
    assert AutoTokenizer.from_pretrained(folder)("a fine film")["input_ids"][0] == 101  # MiniLM's [CLS]
    written = (folder / "model.safetensors").stat().st_mtime_ns
    # The second call finds it: no training, nothing rewritten.
    texts.clear()
    assert student.student_folder(str(teacher), progress, None, **budget) == folder
    assert not any("training" in text for text in texts)
    assert (folder / "model.safetensors").stat().st_mtime_ns == written
    # Another setting is another student; the folders hold nothing half-written.
    assert student.student_folder(str(teacher), None, None, **{**budget, "distill_alpha": 0.9}) != folder
    builds = [p.name for p in (home / "quantization" / "builds").iterdir() if p.is_dir()]
    assert len(builds) == 2 and not any(name.startswith(".") for name in builds)
    with pytest.raises(ValueError, match="unknown training settings"):
        student.student_folder(str(teacher), None, None, max_step=2)


def test_stop_during_training_ends_it_and_stores_nothing(teacher, home):
    stop = threading.Event()
    steps: list[str] = []

    def progress(fraction: float, text: str) -> None:
        if "step " in text and "/" in text:
            steps.append(text)
            stop.set()  # the visitor presses Stop during the first step

    with pytest.raises(Stopped):
        student.student_folder(str(teacher), progress, stop, **{**TINY_DATA, "max_steps": 40, "epochs": 20})
    assert len(steps) == 1 and "step 1/40" in steps[0]
    builds = home / "quantization" / "builds"
    assert [p for p in builds.iterdir() if p.is_dir()] == []  # no student, no temporary folder left


def test_the_saved_default_classifier_is_reused_without_training(teacher, home):
    import shutil

    def copy(folder):
        shutil.copytree(teacher, folder, dirs_exist_ok=True)

    label = registry.save_local_model(student.DEFAULT_NAME, "classifier", copy)
    registry.save_local_model("my-sentiment", "classifier", copy)  # newer, but a visitor's own: chosen by name only
    texts: list[str] = []
    source = student.default_classifier(lambda fraction, text: texts.append(text), threading.Event())
    assert source.label == label == "local:minilm-movies" and source.origin == "local"
    assert json.loads((Path(source.location) / "config.json").read_text())["num_hidden_layers"] == 6
    assert texts == []  # nothing trained
