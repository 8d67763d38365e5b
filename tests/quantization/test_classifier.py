"""The classifier family of the quantization page (spaces/quantization/classifier.py) on a tiny seeded
BertForSequenceClassification with MiniLM's tokenizer: every CPU variant builds and stays close to fp32, sizes
add up (fp16 weights are half of fp32's), GPU-only variants and missing packages are Unavailable, failures
say why, Stop stops, and stored builds are not rebuilt.

Seen failing when the code was broken: with the fp16 variant loaded in fp32 (sizes equal), with the reference
file keyed without the test size (a second comparison read the first one's logits), and with torchao's quantized
weights measured as plain tensors (their outer tensor has no storage to read)."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

import transformers

from spaces.quantization import classifier
from spaces.quantization.common import Stopped, Unavailable
from tests.shared.test_onnx_export import tiny_bert_config, tiny_folder

CPU_VARIANTS = [v.name for v in classifier.VARIANTS if v.needs != "gpu" and v.name != "distilled-student"]
SMALL = dict(test_size=40, other_domain_size=10, calibration_size=16, repeats=3, max_length=32, batch=16)
# Per variant: the mean |logit - fp32 logit| allowed, as a share of the fp32 logits' standard deviation over the
# test sentences, and the least agreement with fp32's predictions. Seen on the tiny model: bf16 0.02, int8
# 0.03-0.09 of it, agreements 0.91-1.0 (a variant that ignores its input is off by about 1.0, agreeing 0.86).
TOLERANCE = {"pytorch-fp32": (1e-6, 1.0), "onnx-fp32": (1e-4, 1.0), "pytorch-fp16": (0.01, 0.95),
             "pytorch-bf16": (0.1, 0.95), "torchao-int8-dynamic": (0.2, 0.85),
             "torchao-int8-weight-only": (0.2, 0.85), "onnx-int8-dynamic": (0.2, 0.85),
             "onnx-int8-static": (0.25, 0.85)}
FIGURES = ("disk MB", "memory MB", "build s", "load s", "p50 ms", "p95 ms", "batch-16 /s", "accuracy",
           "accuracy tweets", "accuracy amazon", "accuracy nyt", "agreement", "logits max diff", "logits mean diff",
           "notes")


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """Builds go to a temporary folder, not PLAYGROUND_HOME (the tiny model's keys would pile up there)."""
    folder = tmp_path_factory.mktemp("quantization-builds")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(classifier, "builds_dir", lambda: folder)
        yield folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, builds):
    return tiny_folder(tmp_path_factory.mktemp("tiny-classifier"), tiny_bert_config())


@pytest.fixture(scope="module")
def params(tiny):
    return classifier.default_params(source=str(tiny), label="tiny BERT", **SMALL)


@pytest.fixture(scope="module")
def measured(params, tmp_path_factory):
    """Every CPU variant measured once, the reference first, as the runner does (here in one process)."""
    work = tmp_path_factory.mktemp("comparison")
    seen: list[str] = []
    results = {name: classifier.measure(name, params, work, lambda f, text: seen.append(text), threading.Event())
               for name in CPU_VARIANTS}
    return results, work, seen


def test_the_family_follows_the_contract():
    assert classifier.FAMILY == "classifier" and classifier.VARIANTS[0].name == classifier.REFERENCE
    assert classifier.QUALITY == ("accuracy", "higher")
    names = [v.name for v in classifier.VARIANTS]
    assert len(set(names)) == len(names) and {"gpu-bitsandbytes-int8", "gpu-bitsandbytes-nf4"} <= set(names)
    params = classifier.default_params(source="/some/folder", test_size=10)
    assert json.loads(json.dumps(params)) == params and params["test_size"] == 10 and params["batch"] == 32
    with pytest.raises(ValueError, match="unknown classifier settings \\['tests_size'\\]"):
        classifier.default_params(source="/some/folder", tests_size=10)
    with pytest.raises(ValueError, match="calibration_size must be a whole number in \\[8, 5000\\]"):
        classifier.default_params(source="/some/folder", calibration_size=2)
    assert classifier.default_params()["source"]  # offline: a saved classifier, or MiniLM with a seeded head


@pytest.mark.parametrize("name", CPU_VARIANTS)
def test_each_cpu_variant_stays_close_to_fp32(name, measured):
    results, work, _ = measured
    result = results[name]
    assert set(FIGURES) <= set(result), set(FIGURES) - set(result)
    assert json.loads(json.dumps(result)) == result
    reference = np.load(work / classifier.REFERENCE_FILE)
    logits = np.concatenate([reference[k] for k in reference.files if k.startswith("logits:")])
    assert len(logits) == result["test sentences"] == 40 + 3 * 10
    share, agreement = TOLERANCE[name]
    assert result["logits mean diff"] <= share * logits.std() and result["agreement"] >= agreement
    assert result["logits max diff"] >= result["logits mean diff"]
    assert 0 <= result["accuracy"] <= 1 and result["p50 ms"] > 0 and result["batch-16 /s"] > 0
    assert result["disk MB"] > 0 and result["memory MB"] >= 0 and result["device"] == "cpu"


def test_sizes_add_up(measured):
    results, _, _ = measured
    fp32 = results["pytorch-fp32"]
    for half in ("pytorch-fp16", "pytorch-bf16"):
        assert results[half]["disk MB"] == pytest.approx(fp32["disk MB"] / 2, rel=0.05)
        assert results[half]["memory MB"] == pytest.approx(fp32["memory MB"] / 2, rel=0.05)
    # The tiny model is mostly its (unquantized) embeddings, so int8 Linear layers save little, but some.
    for int8 in ("torchao-int8-dynamic", "torchao-int8-weight-only"):
        assert results[int8]["memory MB"] < fp32["memory MB"]
    assert results["onnx-int8-dynamic"]["disk MB"] < results["onnx-fp32"]["disk MB"]
    assert results["pytorch-fp16"]["notes"].startswith("emulated") or "native" in results["pytorch-fp16"]["notes"]


def test_progress_is_reported_and_builds_are_not_repeated(measured, params):
    results, work, seen = measured
    assert "timing batch 1" in seen and any(text.startswith("accuracy ") and "/70" in text for text in seen)
    assert results["onnx-int8-static"]["build s"] > 0
    again = classifier.measure("onnx-int8-static", params, work, None, None)
    assert again["build s"] == 0.0 and again["accuracy"] == results["onnx-int8-static"]["accuracy"]


def test_the_reference_is_computed_when_its_run_left_none(params, tmp_path):
    result = classifier.measure("pytorch-bf16", params, tmp_path, None, None)
    assert (tmp_path / classifier.REFERENCE_FILE).is_file() and result["agreement"] >= 0.8
    other = dict(params, test_size=30)  # another comparison in the same folder: the old reference is not reused
    result = classifier.measure("pytorch-fp16", other, tmp_path, None, None)
    assert result["test sentences"] == 60 and result["agreement"] >= 0.95


@pytest.mark.parametrize("name", ["gpu-bitsandbytes-int8", "gpu-bitsandbytes-nf4"])
def test_gpu_variants_are_unavailable_on_a_cpu(name, params, tmp_path):
    from shared.device import pick_device

    if pick_device().startswith("cuda"):
        pytest.skip("this machine has a GPU")
    with pytest.raises(Unavailable, match="needs a GPU"):
        classifier.measure(name, params, tmp_path, None, None)


def test_a_missing_torchao_is_unavailable_by_name(params, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torchao.quantization", None)  # what Python does when it is not installed
    with pytest.raises(Unavailable, match="needs the torchao package"):
        classifier.measure("torchao-int8-dynamic", params, tmp_path, None, None)


def test_failures_say_why(params, tmp_path):
    fnet = tiny_folder(tmp_path / "fnet", transformers.FNetConfig(
        vocab_size=30522, hidden_size=16, num_hidden_layers=1, intermediate_size=32, max_position_embeddings=64,
        id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1}))
    with pytest.raises(ValueError, match="optimum cannot export 'fnet' models to ONNX"):
        classifier.measure("onnx-fp32", dict(params, source=str(fnet)), tmp_path, None, None)
    with pytest.raises(ValueError, match="variant must be one of"):
        classifier.measure("onnx-int4", params, tmp_path, None, None)
    three = tiny_folder(tmp_path / "three", tiny_bert_config(id2label={0: "a", 1: "b", 2: "c"},
                                                             label2id={"a": 0, "b": 1, "c": 2}))
    with pytest.raises(ValueError, match="no negative/positive pair"):
        classifier.measure("pytorch-fp32", dict(params, source=str(three)), tmp_path, None, None)


def test_labels_are_read_from_the_model(tmp_path):
    def config(labels):
        return transformers.BertConfig(id2label=dict(enumerate(labels)))

    assert classifier.label_columns(config(["NEGATIVE", "POSITIVE"])) == ((0, 1), "")
    assert classifier.label_columns(config(["positive", "negative"])) == ((1, 0), "")
    assert classifier.label_columns(config(["negative", "neutral", "positive"])) == ((0, 2), "")
    columns, note = classifier.label_columns(config(["LABEL_0", "LABEL_1"]))
    assert columns == (0, 1) and "read as 0 = negative" in note
    logits = np.array([[0.0, 5.0, 1.0], [2.0, 9.0, 1.0]])
    assert classifier.predictions(logits, (0, 2)).tolist() == [1, 0]  # the neutral column is ignored


def test_stop_ends_the_measurement(params, tmp_path):
    stop = threading.Event()

    def progress(fraction: float, text: str) -> None:
        if text.startswith("accuracy"):
            stop.set()  # the visitor presses Stop during the accuracy pass

    with pytest.raises(Stopped):
        classifier.measure("pytorch-fp32", params, tmp_path, progress, stop)
    assert not (tmp_path / classifier.REFERENCE_FILE).exists()


def test_the_distilled_student_is_measured_beside_its_teacher(params, measured, builds, monkeypatch):
    student = pytest.importorskip("spaces.quantization.student")  # skipped only while the module is absent
    monkeypatch.setattr(student, "builds_dir", lambda: builds)
    results, work, _ = measured
    small = dict(params, student_train={"max_steps": 2, "train_size": 32, "validation_size": 16, "test_size": 16,
                                        "other_domain_size": 8})
    result = classifier.measure("distilled-student", small, work, None, None)
    assert 0 <= result["accuracy"] <= 1 and 0 <= result["agreement"] <= 1
    assert result["teacher speed ratio"] > 0 and result["disk MB"] < results["pytorch-fp32"]["disk MB"]
