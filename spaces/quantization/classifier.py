"""The quantization page's sentence-classifier family: one fine-tuned encoder in every precision and runtime,
measured side by side on the same movie sentences (speed, size, memory, accuracy, agreement with fp32).

    from spaces.quantization import classifier
    params = classifier.default_params(source=folder, label="my classifier", test_size=200)
    figures = classifier.measure("onnx-int8-dynamic", params, work_dir, progress, stop)
    # {"disk MB": 22.9, "p50 ms": 3.1, "batch-32 /s": 410.0, "accuracy": 0.861, "agreement": 0.994, ...}

The page's runner calls `measure` in a fresh process per variant, REFERENCE first (spaces/quantization/
common.py says why). The reference writes its logits to `work_dir/reference.npz`; every other variant's
"agreement" (share of predictions equal to fp32's) and "logits max diff" are read against it. Builds (ONNX
exports, int8 graphs, a seeded head for an encoder that has none) are stored under
PLAYGROUND_HOME/quantization/builds and made once.

Variants: PyTorch fp32 / bf16 / fp16; torchao int8 (dynamic activations) and int8 weight-only; ONNX Runtime
fp32 (optimum's export with graph optimisation), int8 dynamic and int8 static (calibrated); a distilled student
(spaces/quantization/student.py) in fp32; bitsandbytes int8 and NF4 on a GPU.

Test sentences: the fixed held-out movie split (`spaces.finetune.logic.movie_dataset`, seed 0) plus the tweets,
Amazon and NYT sets as out-of-domain checks; calibration sentences come from its training split.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from shared.jobs import Progress
from shared.store import write_folder
from spaces.quantization.common import Stopped, Unavailable, Variant, check_stop, format_note, latency, report

FAMILY = "classifier"
REFERENCE = "pytorch-fp32"
VARIANTS: tuple[Variant, ...] = (
    Variant("pytorch-fp32", "PyTorch fp32", "PyTorch", "fp32",
            description="the model as trained: 32-bit floats for weights and math"),
    Variant("pytorch-bf16", "PyTorch bf16", "PyTorch", "bf16",
            description="weights and math cast to bfloat16: fp32's range, 8 bits of precision"),
    Variant("pytorch-fp16", "PyTorch fp16", "PyTorch", "fp16",
            description="weights and math cast to float16: 11 bits of precision, a range up to 65,504"),
    Variant("torchao-int8-dynamic", "torchao int8 (dynamic activations)", "torchao", "int8", needs="torchao",
            description="int8 weights per channel; each activation quantized to int8 per token as it runs"),
    Variant("torchao-int8-weight-only", "torchao int8 weight-only", "torchao", "int8 weights", needs="torchao",
            description="int8 weights per channel, turned back into floats for fp32 math"),
    Variant("onnx-fp32", "ONNX Runtime fp32 (optimised graph)", "ONNX Runtime", "fp32",
            description="optimum's ONNX export with fused attention, GELU and layer norms"),
    Variant("onnx-int8-dynamic", "ONNX Runtime int8 (dynamic)", "ONNX Runtime", "int8",
            description="int8 weights per channel; activation ranges measured on each input as it runs"),
    Variant("onnx-int8-static", "ONNX Runtime int8 (static, calibrated)", "ONNX Runtime", "int8",
            description="int8 weights and activations, the activations' ranges fixed beforehand on training "
                        "sentences"),
    Variant("distilled-student", "Distilled student (PyTorch fp32)", "PyTorch", "fp32",
            description="a smaller encoder trained to copy the model's outputs, then run in fp32"),
    Variant("gpu-bitsandbytes-int8", "bitsandbytes int8 (LLM.int8)", "bitsandbytes", "int8", needs="gpu",
            description="int8 weights; outlier features kept in fp16 (CUDA only)"),
    Variant("gpu-bitsandbytes-nf4", "bitsandbytes NF4", "bitsandbytes", "nf4", needs="gpu",
            description="4-bit NormalFloat weights in blocks of 64, computed in bf16 (CUDA only)"),
)
QUALITY = ("accuracy", "higher")

REFERENCE_FILE = "reference.npz"
LATENCY_SECONDS = 15.0  # cap on each timing loop: torchao's int8 eager path on AVX2 is ~25x slower than fp32
THROUGHPUT_REPEATS = 5  # timed runs of one full batch (fewer once LATENCY_SECONDS have passed)
NEGATIVE_WORDS = ("negative", "neg")
POSITIVE_WORDS = ("positive", "pos")
SEEDED_HEAD_NOTE = "untrained head (random, seeded): accuracy is chance; speed and size are real"


@dataclass(frozen=True)
class Params:
    source: str  # the resolved model: a folder (or a hub id when the hub is reachable), never visitor text
    label: str  # what the page shows for it
    test_size: int = 500  # in-domain (movie) test sentences; 0 = the whole held-out split (1,060)
    other_domain_size: int = 100  # sentences per out-of-domain set (tweets, amazon, nyt); 0 = all of each
    calibration_size: int = 200  # training sentences that calibrate static int8
    repeats: int = 30  # timed batch-1 runs (fewer once LATENCY_SECONDS have passed)
    max_length: int = 64  # tokens per sentence; longer ones are truncated
    batch: int = 32  # sentences per batch for the throughput figure and the accuracy pass
    student_train: dict = field(default_factory=dict)  # overrides for the student's training (student.py)

    def check(self) -> None:
        if not isinstance(self.source, str) or not self.source.strip():
            raise ValueError("source must be a resolved model folder or hub id, got nothing")
        bounds = {"test_size": (0, 20000), "other_domain_size": (0, 20000), "calibration_size": (8, 5000),
                  "repeats": (3, 1000), "max_length": (8, 512), "batch": (1, 512)}
        for name, (low, high) in bounds.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{name} must be a whole number in [{low}, {high}], got {value!r}")
        if not isinstance(self.student_train, dict):
            raise ValueError(f"student_train must be a dict of training settings, got {self.student_train!r}")


def default_source() -> tuple[str, str]:
    """(location, label) of the model compared by default: the classifier role's model (a hub SST-2 model, or
    a classifier trained on the fine-tuning page); offline with none saved, MiniLM with a seeded head."""
    from shared.registry import resolve

    try:
        source = resolve("classifier")
        return source.location, source.label
    except ValueError:
        source = resolve("encoder")
        return source.location, f"{source.label} (untrained 2-label head)"


def check_keys(settings: dict) -> None:
    known = {f.name for f in fields(Params)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ValueError(f"unknown classifier settings {unknown}; known: {sorted(known)}")


def default_params(**overrides) -> dict:
    """The settings of one comparison as a JSON-able dict, `overrides` applied; raises ValueError naming a bad
    or unknown setting."""
    check_keys(overrides)
    if not overrides.get("source"):
        location, label = default_source()
        overrides = {**overrides, "source": location, "label": overrides.get("label") or label}
    overrides.setdefault("label", Path(str(overrides["source"])).name)
    params = Params(**overrides)
    params.check()
    return asdict(params)


def variant(name: str) -> Variant:
    for candidate in VARIANTS:
        if candidate.name == name:
            return candidate
    raise ValueError(f"variant must be one of {[v.name for v in VARIANTS]}, got {name!r}")


def builds_dir() -> Path:
    from shared.settings import read_settings

    return read_settings().home / "quantization" / "builds"


# --------------------------------------------------------------------------------------------------------
# The sentences, and what the model's labels mean
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sentences:
    test: dict[str, tuple[list[str], np.ndarray]]  # domain -> (texts, labels 0 = negative, 1 = positive)
    calibration: list[str]

    @property
    def total(self) -> int:
        return sum(len(texts) for texts, _ in self.test.values())


def load_sentences(params: Params) -> Sentences:
    from spaces.finetune.logic import movie_dataset

    data = movie_dataset(params.calibration_size, 1, params.test_size, seed=0,
                         other_domain_size=params.other_domain_size)
    test = {domain: ([text for text, _ in rows], np.array([label for _, label in rows], dtype=np.int64))
            for domain, rows in data.test.items()}
    return Sentences(test, [text for text, _ in data.train])


def label_columns(config: Any) -> tuple[tuple[int, int], str]:
    """((negative column, positive column), note) of a classifier's logits. Names are read from id2label
    (NEGATIVE/POSITIVE, negative/neutral/positive, ...); an unnamed two-label head is read as 0 = negative,
    1 = positive, as SST-2 models are, and the note says so."""
    names = {int(i): str(name).lower() for i, name in (getattr(config, "id2label", None) or {}).items()}
    negative = [i for i, name in names.items() if name in NEGATIVE_WORDS or name.startswith("neg")]
    positive = [i for i, name in names.items() if name in POSITIVE_WORDS or name.startswith("pos")]
    if len(negative) == 1 and len(positive) == 1:
        return (negative[0], positive[0]), ""
    if len(names) == 2 or getattr(config, "num_labels", 0) == 2:
        return (0, 1), f"labels {sorted(names.values())} read as 0 = negative, 1 = positive"
    raise ValueError(f"the model's labels {sorted(names.values())} have no negative/positive pair to score "
                     "sentiment with")


def predictions(logits: np.ndarray, columns: tuple[int, int]) -> np.ndarray:
    """0 (negative) or 1 (positive): the larger of the two sentiment columns (a neutral column is ignored)."""
    return logits[:, list(columns)].argmax(axis=1)


# --------------------------------------------------------------------------------------------------------
# Building and loading each variant
# --------------------------------------------------------------------------------------------------------


@dataclass
class Loaded:
    """A variant ready to run: `encode(texts)` -> inputs, `predict(inputs)` -> float32 logits [n, labels]."""

    encode: Callable[[list[str]], Any]
    predict: Callable[[Any], np.ndarray]
    config: Any  # the transformers config (labels)
    disk_bytes: int
    memory_bytes: int
    build_seconds: float
    load_seconds: float
    device: str
    notes: list[str] = field(default_factory=list)
    keep: Any = None  # the model or session, held while measuring


def build_name(location: str) -> str:
    """A readable name for builds of `location`: its folder name (its parent's when the folder is "model")."""
    path = Path(location)
    return path.parent.name if path.name == "model" and path.parent.name else path.name


def classifier_location(location: str, progress: Progress | None = None) -> tuple[str, str]:
    """(folder or hub id to load, note). A model with a sequence-classification head is used as it is; an
    encoder without one (MiniLM) gets a seeded random 2-label head, saved once, so that every variant and the
    ONNX export hold the very same head."""
    from transformers import AutoConfig

    from shared.onnx_lm import fingerprint

    config = AutoConfig.from_pretrained(location)
    if any(str(a).endswith("ForSequenceClassification") for a in (getattr(config, "architectures", None) or [])):
        return location, ""
    target = builds_dir() / f"{build_name(location)}-seeded-head-{fingerprint(location, 'seeded-head-2')}"
    if not (target / "config.json").is_file():
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        report(progress, 0.02, "adding a seeded 2-label head")

        def write(scratch: Path) -> None:
            torch.manual_seed(0)
            labels = {0: "negative", 1: "positive"}
            model = AutoModelForSequenceClassification.from_pretrained(
                location, num_labels=2, id2label=labels, label2id={v: k for k, v in labels.items()})
            model.save_pretrained(scratch, safe_serialization=True)
            AutoTokenizer.from_pretrained(location).save_pretrained(scratch)

        write_folder(target, write, "config.json")
    return str(target), SEEDED_HEAD_NOTE


def tensor_bytes(module: Any) -> int:
    """Bytes of a module's parameters and buffers, looking inside tensor subclasses (torchao keeps int8 data
    and scales in inner tensors; the outer one only reports the original shape and dtype)."""
    import torch

    seen: set[int] = set()

    def size(tensor) -> int:
        if type(tensor) not in (torch.Tensor, torch.nn.Parameter) and hasattr(tensor, "__tensor_flatten__"):
            try:
                names, _ = tensor.__tensor_flatten__()
                inner = [getattr(tensor, name) for name in names]
            except Exception:  # a subclass that holds its own data (bitsandbytes' packed weights)
                inner = []
            if inner:
                return sum(size(t) for t in inner if isinstance(t, torch.Tensor))
        key = tensor.untyped_storage().data_ptr() if tensor.device.type != "meta" else id(tensor)
        if key in seen:
            return 0
        seen.add(key)
        return tensor.numel() * tensor.element_size()

    return sum(size(t) for t in [*module.parameters(), *module.buffers()])


def saved_bytes(model: Any) -> int:
    """Bytes the model's weights take saved: safetensors for plain tensors, torch.save for quantized ones
    (torchao's tensor subclasses cannot go into safetensors)."""
    import torch

    try:
        with tempfile.TemporaryDirectory(prefix="saved-size-") as folder:
            model.save_pretrained(folder, safe_serialization=True)
            return sum(p.stat().st_size for p in Path(folder).glob("*.safetensors"))
    except Exception:
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        return buffer.getbuffer().nbytes


def torch_variant(name: str, location: str, params: Params, device: str, progress: Progress | None,
                  stop: threading.Event | None) -> Loaded:
    """The PyTorch variants: fp32, bf16, fp16, torchao int8, bitsandbytes int8 / NF4, the student (fp32)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    # 1. Where the weights come from (the student is trained, or found in its cache, first).
    notes: list[str] = []
    build_seconds = 0.0
    if name == "distilled-student":
        try:
            from spaces.quantization.student import student_folder
        except ModuleNotFoundError as error:
            if error.name != "spaces.quantization.student":
                raise
            raise Unavailable("the distilled student needs spaces/quantization/student.py") from None
        report(progress, 0.02, "training (or finding) the distilled student")
        started = time.perf_counter()
        location = str(student_folder(location, progress, stop, **params.student_train))
        build_seconds = time.perf_counter() - started
        check_stop(stop)
    # 2. Load in the variant's dtype (bitsandbytes quantizes while loading).
    report(progress, 0.05, f"loading {variant(name).title}")
    dtype = {"pytorch-bf16": torch.bfloat16, "pytorch-fp16": torch.float16}.get(name, torch.float32)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if name.startswith("gpu-bitsandbytes"):
        kwargs = bitsandbytes_kwargs(name)
    started = time.perf_counter()
    model = AutoModelForSequenceClassification.from_pretrained(location, **kwargs).eval()
    if "device_map" not in kwargs:
        model.to(device)
    tokenizer = AutoTokenizer.from_pretrained(location)
    load_seconds = time.perf_counter() - started
    # 3. torchao rewrites the Linear weights in place.
    if name.startswith("torchao"):
        report(progress, 0.2, "quantizing with torchao")
        started = time.perf_counter()
        torchao_quantize(model, name)
        build_seconds = time.perf_counter() - started
    precision = variant(name).precision
    note = format_note(precision, "cpu" if device == "cpu" else "gpu")
    if note and not name.startswith("gpu-"):
        notes.append(note)
    if name == "torchao-int8-dynamic" and device == "cpu":
        notes.append("torchao's int8 matmuls run eagerly on the CPU (no fused kernel without torch.compile)")

    # Only what the model's forward takes: a hub DistilBERT often ships a BERT tokenizer, whose token_type_ids
    # DistilBertForSequenceClassification refuses (the ONNX variants likewise feed only the graph's inputs).
    signature = inspect.signature(model.forward).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.values())

    def encode(texts: list[str]):
        encoded = tokenizer(texts, padding=True, truncation=True, max_length=params.max_length,
                            return_tensors="pt")
        return {k: v.to(device) for k, v in encoded.items() if takes_any or k in signature}

    def predict(inputs) -> np.ndarray:
        with torch.inference_mode():
            return model(**inputs).logits.float().cpu().numpy()  # .cpu() waits for a GPU to finish

    memory = tensor_bytes(model)
    return Loaded(encode, predict, model.config, saved_bytes(model), memory, build_seconds, load_seconds,
                  device, notes, keep=model)


def torchao_configs() -> dict[str, Any]:
    """torchao's quantize_ and a config per variant; Unavailable when torchao is not installed."""
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_
    except ImportError as error:
        raise Unavailable(f"needs the torchao package (pip install torchao): {error}") from None
    return {"quantize_": quantize_, "torchao-int8-dynamic": Int8DynamicActivationInt8WeightConfig,
            "torchao-int8-weight-only": Int8WeightOnlyConfig}


def torchao_quantize(model: Any, name: str) -> None:
    torchao = torchao_configs()
    torchao["quantize_"](model, torchao[name]())


def bitsandbytes_kwargs(name: str) -> dict:
    import torch
    from transformers import BitsAndBytesConfig

    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise Unavailable("needs the bitsandbytes package (pip install bitsandbytes) and a CUDA GPU") from None
    if name == "gpu-bitsandbytes-int8":
        # The layers left unquantized stay in fp32: with them in fp16, LLM.int8 gave chance-level predictions on
        # MiniLM (bitsandbytes 0.50.2, torch 2.11, H100) where fp32 agrees with the reference on 99 %.
        config, dtype = BitsAndBytesConfig(load_in_8bit=True), torch.float32
    else:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
    return {"quantization_config": config, "dtype": dtype, "device_map": {"": torch.cuda.current_device()}}


def onnx_variant(name: str, location: str, params: Params, sentences: Sentences, progress: Progress | None,
                 stop: threading.Event | None) -> Loaded:
    """The ONNX Runtime variants (on the CPU): built through shared/onnx_export.py, stored once."""
    from transformers import AutoConfig, AutoTokenizer

    from shared import onnx_export

    # 1. Build (or find) the graph.
    store, label = builds_dir(), build_name(location)
    if name == "onnx-fp32":
        report(progress, 0.05, "exporting to ONNX and optimising the graph")
        folder = onnx_export.optimize(location, "text-classification", level=2, store=store, name=label)
    elif name == "onnx-int8-dynamic":
        report(progress, 0.05, "exporting to ONNX and quantizing to int8")
        folder = onnx_export.quantize_dynamic(location, "text-classification", store=store, name=label)
    else:
        report(progress, 0.05, f"exporting to ONNX and calibrating on {len(sentences.calibration)} sentences")
        folder = onnx_export.quantize_static(location, "text-classification", sentences.calibration,
                                             max_length=params.max_length, store=store, name=label,
                                             progress=lambda f, text: report(progress, 0.05 + 0.2 * f, text))
    check_stop(stop)
    # 2. Open a session. Its weights' memory is the graph's initializers, as stored (ONNX Runtime may also keep
    # pre-packed copies; the runner's peak RSS shows the whole process). The growth of RSS while loading is no
    # measure: a build in this process has just freed as much memory for the session to reuse.
    report(progress, 0.25, "loading the ONNX Runtime session")
    started = time.perf_counter()
    session = onnx_export.session(folder)
    load_seconds = time.perf_counter() - started
    memory = onnx_export.model_bytes(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    input_names = [i.name for i in session.get_inputs()]
    notes = [format_note(variant(name).precision, "cpu")] if name != "onnx-fp32" else []
    from shared.device import pick_device

    if pick_device() != "cpu":
        notes.append("ONNX Runtime runs on the CPU here (the PyTorch variants on the GPU)")

    def encode(texts: list[str]):
        encoded = tokenizer(texts, padding=True, truncation=True, max_length=params.max_length,
                            return_tensors="np")
        return {k: np.asarray(encoded[k], dtype=np.int64) for k in input_names}

    def predict(inputs) -> np.ndarray:
        return np.asarray(session.run(None, inputs)[0], dtype=np.float32)

    return Loaded(encode, predict, AutoConfig.from_pretrained(folder), onnx_export.model_bytes(folder), memory,
                  onnx_export.build_seconds(folder), load_seconds, "cpu", [n for n in notes if n], keep=session)


# --------------------------------------------------------------------------------------------------------
# Running it
# --------------------------------------------------------------------------------------------------------


def all_logits(loaded: Loaded, sentences: Sentences, batch: int, progress: Progress | None,
               stop: threading.Event | None, start: float = 0.5) -> dict[str, np.ndarray]:
    """Logits of every test sentence, in batches of similar length (less padding), in the original order."""
    done, total = 0, sentences.total
    out: dict[str, np.ndarray] = {}
    for domain, (texts, _) in sentences.test.items():
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        rows: list[np.ndarray | None] = [None] * len(texts)
        for begin in range(0, len(order), batch):
            check_stop(stop)
            chosen = order[begin:begin + batch]
            logits = loaded.predict(loaded.encode([texts[i] for i in chosen]))
            for i, row in zip(chosen, logits):
                rows[i] = row
            done += len(chosen)
            report(progress, start + (1 - start) * done / total, f"accuracy {done}/{total}")
        out[domain] = np.stack(rows) if rows else np.zeros((0, 2), np.float32)
    return out


def reference_key(params: Params) -> str:
    """What the reference logits depend on: the model and the sentences."""
    described = json.dumps([params.source, params.test_size, params.other_domain_size, params.max_length])
    return hashlib.sha256(described.encode()).hexdigest()[:16]


def read_reference(work_dir: Path, params: Params) -> dict[str, Any] | None:
    path = Path(work_dir) / REFERENCE_FILE
    try:
        with np.load(path) as data:
            if str(data["key"]) != reference_key(params):
                return None
            return {k: data[k] for k in data.files}
    except (OSError, KeyError, ValueError):
        return None


def write_reference(work_dir: Path, params: Params, logits: dict[str, np.ndarray], p50_ms: float | None,
                    columns: tuple[int, int]) -> None:
    """reference.npz, written to a temporary file and renamed: another variant never reads half of it."""
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    arrays = {f"logits:{domain}": values for domain, values in logits.items()}
    arrays["key"] = np.array(reference_key(params))
    arrays["p50_ms"] = np.array(np.nan if p50_ms is None else p50_ms)
    arrays["columns"] = np.array(columns, dtype=np.int64)
    temporary = work_dir / f".{REFERENCE_FILE}.{os.getpid()}.{threading.get_ident()}.npz"
    np.savez(temporary, **arrays)
    os.replace(temporary, work_dir / REFERENCE_FILE)


def reference_logits(work_dir: Path, params: Params, location: str, sentences: Sentences, device: str,
                     progress: Progress | None, stop: threading.Event | None) -> dict[str, Any]:
    """The fp32 logits this comparison's variants are held against: read from work_dir, or (when the reference
    run left none) computed here and written for the others."""
    found = read_reference(work_dir, params)
    if found is not None:
        return found
    report(progress, 0.3, "computing the fp32 reference")
    loaded = torch_variant(REFERENCE, location, params, device, None, stop)
    logits = all_logits(loaded, sentences, params.batch, None, stop)
    write_reference(work_dir, params, logits, None, label_columns(loaded.config)[0])
    return read_reference(work_dir, params) or {}


def measure(variant_name: str, params: dict, work_dir: Path, progress: Progress | None = None,
            stop: threading.Event | None = None) -> dict:
    """Build (or load) one variant, time it at batch 1 and batch `params["batch"]`, score it on the test
    sentences and compare its predictions with fp32's; returns the page's figures as a flat dict."""
    # 1. Check the inputs, and whether the variant can run here at all.
    chosen = variant(variant_name)
    check_keys(params)
    p = Params(**params)
    p.check()
    from shared.device import pick_device

    device = pick_device()
    if chosen.needs == "gpu" and not device.startswith("cuda"):
        raise Unavailable(f"needs a GPU: {chosen.runtime} {chosen.precision} runs on CUDA only")
    if chosen.needs == "torchao":
        torchao_configs()  # raises Unavailable naming the package when it is missing
    check_stop(stop)
    # 2. The sentences, and the model with a classification head.
    report(progress, 0.0, "reading the sentences")
    sentences = load_sentences(p)
    location, head_note = classifier_location(p.source, progress)
    check_stop(stop)
    # 3. Build or load the variant.
    if chosen.runtime == "ONNX Runtime":
        loaded = onnx_variant(variant_name, location, p, sentences, progress, stop)
    else:
        loaded = torch_variant(variant_name, location, p, device, progress, stop)
    columns, label_note = label_columns(loaded.config)
    check_stop(stop)
    # 4. Latency at batch 1 on a sentence of median length, then throughput over one full batch.
    movies = next(iter(sentences.test.values()))[0]
    typical = sorted(movies, key=len)[len(movies) // 2]
    single = loaded.encode([typical])
    report(progress, 0.3, "timing batch 1")
    timing = latency(lambda: loaded.predict(single), warmup=2, repeats=p.repeats, stop=stop,
                     max_seconds=LATENCY_SECONDS)
    report(progress, 0.4, f"timing batch {p.batch}")
    full = loaded.encode([movies[i % len(movies)] for i in range(p.batch)])
    batch_timing = latency(lambda: loaded.predict(full), warmup=1, repeats=THROUGHPUT_REPEATS, stop=stop,
                           max_seconds=LATENCY_SECONDS)
    # 5. Every test sentence: accuracy per domain.
    logits = all_logits(loaded, sentences, p.batch, progress, stop, start=0.5)
    result: dict[str, Any] = {
        "disk MB": round(loaded.disk_bytes / 1e6, 2),
        "memory MB": round(loaded.memory_bytes / 1e6, 2),
        "build s": round(loaded.build_seconds, 2),
        "load s": round(loaded.load_seconds, 3),
        "p50 ms": round(timing["p50 ms"], 3),
        "p95 ms": round(timing["p95 ms"], 3),
        f"batch-{p.batch} /s": round(p.batch / (batch_timing["mean ms"] / 1000), 1),
    }
    for domain, (_, labels) in sentences.test.items():
        correct = predictions(logits[domain], columns) == labels
        result["accuracy" if domain == "movies" else f"accuracy {domain}"] = round(float(correct.mean()), 4)
    # 6. Agreement with fp32 (the reference writes what the others read).
    if variant_name == REFERENCE:
        write_reference(work_dir, p, logits, timing["p50 ms"], columns)
        reference = read_reference(work_dir, p) or {}
    else:
        reference = reference_logits(work_dir, p, location, sentences, device, progress, stop)
    ours = np.concatenate([logits[d] for d in sentences.test])
    theirs = np.concatenate([reference[f"logits:{d}"] for d in sentences.test])
    same = predictions(ours, columns) == predictions(theirs, tuple(reference["columns"]))
    result["agreement"] = round(float(same.mean()), 4)
    if ours.shape == theirs.shape:  # (a student may have another head than its teacher)
        result["logits max diff"] = round(float(np.abs(ours - theirs).max()), 5)
        result["logits mean diff"] = round(float(np.abs(ours - theirs).mean()), 5)
    teacher_ms = float(reference.get("p50_ms", np.nan))
    if variant_name == "distilled-student" and np.isfinite(teacher_ms) and timing["p50 ms"] > 0:
        result["teacher speed ratio"] = round(teacher_ms / timing["p50 ms"], 2)
    result["test sentences"] = sentences.total
    result["device"] = loaded.device
    result["notes"] = "; ".join(n for n in [head_note, label_note, *loaded.notes] if n)
    report(progress, 1.0, "done")
    return result


__all__ = ["FAMILY", "QUALITY", "REFERENCE", "VARIANTS", "Params", "Stopped", "Unavailable", "default_params",
           "measure"]
