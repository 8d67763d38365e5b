"""The shared ONNX export path (shared/onnx_export.py) on a tiny seeded BertForSequenceClassification with
MiniLM's real tokenizer: optimum's export gives PyTorch's logits, the optimised graph is fused and still exact,
int8 builds stay close, every build is stored once, and a model optimum cannot export is refused by name.

Seen failing when the code was broken: with quantization reading the optimised graph (ONNX Runtime's quantizer
cannot type its fused operators), with the calibration hash left out of the key (another calibration set reused
the first build), and with the stored build not looked up before building (the second export ran optimum again:
the test swaps optimum's exporter for one that fails, so only a rebuild would call it)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import torch
import transformers

from shared import onnx_export
from shared.registry import resolve

SENTENCES = ["a gorgeous, witty, seductive movie.", "the film is flat, dull and far too long",
             "an utterly charming and hilarious film", "not a single moment rings true",
             "it is what it is", "the best thing about it is the soundtrack, and that is not saying much"]
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def tiny_folder(folder: Path, config) -> Path:
    """A seeded model of the real class (about 0.5 M parameters, mostly MiniLM-sized embeddings) saved with
    MiniLM's tokenizer."""
    torch.manual_seed(0)
    model = transformers.AutoModelForSequenceClassification.from_config(config).eval()
    model.save_pretrained(folder)
    tokenizer_source = Path(resolve("encoder").location)
    for name in TOKENIZER_FILES:
        shutil.copy(tokenizer_source / name, folder / name)
    return folder


def tiny_bert_config(**changes):
    """A two-layer BERT, 16 wide. Weights drawn 25x wider than BERT's 0.02 so that the logits depend on the
    sentence (at 0.02 they are the same for every sentence to 4 digits, and any rounding looks harmless)."""
    settings = dict(vocab_size=30522, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=32, max_position_embeddings=64, initializer_range=0.5,
                    id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1})
    return transformers.BertConfig(**{**settings, **changes})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_folder(tmp_path_factory.mktemp("tiny-bert"), tiny_bert_config())


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("onnx-store")


def encode(folder: Path, texts=SENTENCES) -> dict[str, np.ndarray]:
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    return dict(tokenizer(list(texts), padding=True, truncation=True, max_length=32, return_tensors="np"))


def torch_logits(folder: Path) -> np.ndarray:
    model = transformers.AutoModelForSequenceClassification.from_pretrained(folder).eval()
    with torch.inference_mode():
        return model(**{k: torch.tensor(v) for k, v in encode(folder).items()}).logits.numpy()


def onnx_logits(folder: Path) -> np.ndarray:
    session = onnx_export.session(folder)
    inputs = encode(folder)
    return session.run(None, {i.name: inputs[i.name].astype(np.int64) for i in session.get_inputs()})[0]


def op_types(folder: Path) -> set[str]:
    import onnx

    return {node.op_type for node in onnx.load(str(folder / onnx_export.MODEL_FILE)).graph.node}


def test_export_gives_pytorch_logits_and_is_built_once(tiny, store, monkeypatch):
    folder = onnx_export.export(tiny, "text-classification", store=store, name="tiny")
    assert folder.parent == store and folder.name.startswith("tiny-export-")
    np.testing.assert_allclose(onnx_logits(folder), torch_logits(tiny), atol=1e-5)
    info = json.loads((folder / onnx_export.INFO_FILE).read_text())
    assert info["task"] == "text-classification" and onnx_export.build_seconds(folder) > 0
    assert (folder / "tokenizer.json").is_file() and (folder / "config.json").is_file()
    stamp = (folder / onnx_export.MODEL_FILE).stat().st_mtime_ns

    def export_again(*args, **kwargs):
        raise AssertionError("exported a second time")

    import optimum.exporters.onnx

    monkeypatch.setattr(optimum.exporters.onnx, "main_export", export_again)
    assert onnx_export.export(tiny, "text-classification", store=store, name="tiny") == folder  # not rebuilt
    assert (folder / onnx_export.MODEL_FILE).stat().st_mtime_ns == stamp
    assert [p.name for p in store.iterdir() if p.name.startswith(".")] == []  # no temporary folder left
    assert onnx_export.session(folder) is onnx_export.session(folder)  # one session per folder


def test_an_explicit_target_is_rebuilt_when_the_weights_change(tiny, tmp_path):
    source = Path(shutil.copytree(tiny, tmp_path / "source"))
    target = tmp_path / "run" / "onnx"
    assert onnx_export.export(source, target=target) == target
    first = onnx_logits(target)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(source)
    with torch.no_grad():
        model.classifier.bias += 1.0
    model.save_pretrained(source)
    onnx_export.forget_sessions()
    assert onnx_export.export(source, target=target) == target
    np.testing.assert_allclose(onnx_logits(target), first + 1.0, atol=1e-5)
    assert sorted(p.name for p in target.parent.iterdir()) == ["onnx"]


def test_optimized_graph_is_fused_and_still_exact(tiny, store):
    folder = onnx_export.optimize(tiny, "text-classification", level=2, store=store, name="tiny")
    plain = onnx_export.export(tiny, store=store, name="tiny")
    assert {"Attention", "SkipLayerNormalization"} <= op_types(folder)
    assert "Attention" not in op_types(plain)
    np.testing.assert_allclose(onnx_logits(folder), torch_logits(tiny), atol=1e-4)
    with pytest.raises(ValueError, match="optimization level must be one of"):
        onnx_export.optimize(tiny, level=3, store=store)


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_int8_builds_stay_close_to_fp32(mode, tiny, store):
    if mode == "dynamic":
        folder = onnx_export.quantize_dynamic(tiny, "text-classification", store=store, name="tiny")
        assert "MatMulInteger" in op_types(folder)
    else:
        folder = onnx_export.quantize_static(tiny, "text-classification", SENTENCES * 4, store=store, name="tiny")
        assert "QuantizeLinear" in op_types(folder)
        assert not list(folder.glob("augmented*"))  # the calibration graph is not part of the build
    expected = torch_logits(tiny)
    difference = np.abs(onnx_logits(folder) - expected).mean()
    assert 0 < difference < 0.2 * expected.std()  # changed by rounding, far less than the logits vary
    assert onnx_export.build_seconds(folder) > 0


def test_static_builds_are_keyed_by_their_calibration_sentences(tiny, store):
    first = onnx_export.quantize_static(tiny, "text-classification", SENTENCES * 4, store=store, name="tiny")
    assert onnx_export.quantize_static(tiny, "text-classification", SENTENCES * 4, store=store, name="tiny") == first
    other = onnx_export.quantize_static(tiny, "text-classification", SENTENCES[:2] * 12, store=store, name="tiny")
    assert other != first and other.is_dir()  # as many sentences, other ones: another build
    with pytest.raises(ValueError, match="calibration method must be one of"):
        onnx_export.quantize_static(tiny, "text-classification", SENTENCES, method="entropy", store=store)
    with pytest.raises(ValueError, match="at least one calibration sentence"):
        onnx_export.quantize_static(tiny, "text-classification", ["  "], store=store)


def test_a_model_optimum_cannot_export_is_refused_by_name(tmp_path, store):
    config = transformers.FNetConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1, intermediate_size=32,
                                     max_position_embeddings=64, num_labels=2)
    folder = tiny_folder(tmp_path / "fnet", config)
    with pytest.raises(ValueError, match="optimum cannot export 'fnet' models to ONNX"):
        onnx_export.export(folder, store=store)
    with pytest.raises(ValueError, match="not 'text-generation'"):
        onnx_export.export(tiny_folder(tmp_path / "bert", tiny_bert_config()), "text-generation", store=store)
    assert not list(store.glob("fnet-*")) and not list(store.glob(".fnet-*"))
