"""A decoder-only language model as one lean ONNX graph, run by ONNX Runtime with its KV cache kept in place.

    from shared.onnx_lm import OnnxCausalLM, build_decoder, supports
    folder = build_decoder(torch_model, "out/", weights="int8")   # Llama / Qwen2 / Mistral-style models
    lm = OnnxCausalLM(folder)
    logits, state = lm.prefill([1, 2, 3])      # the logits of the token after the prompt, and the KV cache
    logits = lm.step(state, token_id)          # one more token: reuses the cache

Why not optimum's export? On a CPU, decoding one token of a small model is bound by per-operator overhead:
optimum's traced graph of SmolLM2-135M runs ~3,100 operators per token (shape arithmetic, masks, rotary
tables), and its `generate` converts every tensor between numpy and torch. This graph is written by hand
from the model's weights with ONNX Runtime's fused CPU operators, about ten per layer:

    Gather (embeddings)
    per layer: [Skip]SimplifiedLayerNormalization -> MatMul(q|k|v packed) -> GroupQueryAttention (rotary,
               causal mask and KV cache inside) -> MatMul(o) -> SkipSimplifiedLayerNormalization ->
               MatMul(gate|up packed) -> Split -> SiLU(gate) * up -> MatMul(down)
    SkipSimplifiedLayerNormalization -> last position -> MatMul(lm_head)

With `weights="int8"` (or "int4") every MatMul becomes MatMulNBits: block-wise symmetric weight quantization
(32 weights per scale), activations quantized on the fly by the VNNI/AVX-512 kernels (accuracy_level 4).
Builds are stored under PLAYGROUND_HOME/onnx/ keyed by the weights they came from, so a model is converted
once. Batch 1 only (the page generates for one visitor at a time); the logits are the last position's.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shared.store import write_folder

BUILDER_VERSION = 1  # bump when the graph changes: stored builds with another version are rebuilt
WEIGHT_FORMATS = ("fp32", "int8", "int4")
BLOCK_SIZE = 32  # weights per quantization scale (64 or 128 measured no faster here)
ACCURACY_LEVEL = 4  # MatMulNBits computes in int8 with per-block activation scales (fast with VNNI)
SUPPORTED_TYPES = ("llama", "mistral", "qwen2")  # pre-norm, RMSNorm, rotary, SwiGLU, grouped-query attention
STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn")  # position tables that do not depend on the length
MODEL_FILE = "model.onnx"
IR_VERSION = 10  # what onnxruntime 1.2x-1.3x reads (onnx writes a newer one by default)
INFO_FILE = "playground.json"


def supports(config: Any) -> str | None:
    """None when `build_decoder` can convert a model with this transformers config, else the reason why not."""
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_TYPES:
        return f"the ONNX Runtime backend runs {', '.join(SUPPORTED_TYPES)} models; this one is {model_type!r}"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"the ONNX Runtime backend needs the SiLU activation, not {config.hidden_act!r}"
    if model_type == "mistral" and getattr(config, "sliding_window", None):
        return "the ONNX Runtime backend does not do sliding-window attention"
    if model_type == "qwen2" and getattr(config, "use_sliding_window", False):
        return "the ONNX Runtime backend does not do sliding-window attention"
    if rope_type(config) not in STATIC_ROPE_TYPES:
        return f"the ONNX Runtime backend does not do {rope_type(config)!r} rotary scaling"
    return None


def head_dim(config: Any) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def rope_type(config: Any) -> str:
    return (getattr(config, "rope_scaling", None) or {}).get("rope_type", "default")


# --------------------------------------------------------------------------------------------------------
# Building the graph
# --------------------------------------------------------------------------------------------------------


@dataclass
class _Graph:
    """Nodes and initializers of the graph being written, with unique names."""

    weights: str
    nodes: list = field(default_factory=list)
    initializers: list = field(default_factory=list)

    def constant(self, name: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: Sequence[str], outputs: Sequence[str], name: str, domain: str = "",
             **attributes) -> list[str]:
        from onnx import helper

        self.nodes.append(helper.make_node(op, list(inputs), list(outputs), name=name, domain=domain or None,
                                           **attributes))
        return list(outputs)

    def linear(self, x: str, weight: np.ndarray, bias: np.ndarray | None, name: str) -> str:
        """x @ weight.T (+ bias): a MatMul, or a MatMulNBits with the weight quantized block-wise."""
        weight = np.asarray(weight, dtype=np.float32)  # [out, in] as torch stores it
        out = f"{name}/out"
        if self.weights == "fp32":
            self.node("MatMul", [x, self.constant(f"{name}.weight", weight.T)], [out], name)
        else:
            bits = 8 if self.weights == "int8" else 4
            packed, scales = quantize_blockwise(weight, bits)
            n, k = weight.shape
            self.node("MatMulNBits", [x, self.constant(f"{name}.qweight", packed),
                                      self.constant(f"{name}.scales", scales)], [out], name,
                      domain="com.microsoft", K=k, N=n, bits=bits, block_size=BLOCK_SIZE,
                      accuracy_level=ACCURACY_LEVEL)
        if bias is None:
            return out
        return self.node("Add", [out, self.constant(f"{name}.bias", np.asarray(bias, np.float32))],
                         [f"{name}/biased"], f"{name}/bias")[0]


def quantize_blockwise(weight: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """ONNX Runtime's own block quantizer (symmetric): weight [N, K] -> (packed [N, blocks, bytes], scales)."""
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits, quantize_matmul_8bits

    n, k = weight.shape
    blocks = -(-k // BLOCK_SIZE)
    columns = np.zeros((blocks * BLOCK_SIZE, n), dtype=np.float32)  # [K, N], padded to whole blocks
    columns[:k] = weight.T
    packed = np.zeros((n, blocks, BLOCK_SIZE * bits // 8), dtype=np.uint8)
    scales = np.zeros((n, blocks), dtype=np.float32)
    zero_points = np.zeros((n, -(-blocks // (8 // bits))), dtype=np.uint8)
    quantize = quantize_matmul_8bits if bits == 8 else quantize_matmul_4bits
    quantize(packed, columns, scales, zero_points, BLOCK_SIZE, n, blocks * BLOCK_SIZE, True)
    return packed, scales.reshape(-1)


def rotary_tables(config: Any) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of position x frequency, [max positions, head_dim / 2], as transformers computes them."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    kind = rope_type(config)
    if kind == "default":
        size = head_dim(config)
        base = getattr(config, "rope_theta", 10000.0)
        inv_freq = 1.0 / (base ** (np.arange(0, size, 2, dtype=np.float64) / size))
        scaling = 1.0
    else:
        inv_freq, scaling = ROPE_INIT_FUNCTIONS[kind](config, "cpu")
        inv_freq = inv_freq.double().numpy()
    angles = np.outer(np.arange(config.max_position_embeddings, dtype=np.float64), inv_freq)
    return (np.cos(angles) * scaling).astype(np.float32), (np.sin(angles) * scaling).astype(np.float32)


def _array(tensor) -> np.ndarray | None:
    return None if tensor is None else tensor.detach().float().cpu().numpy()


def build_graph(model: Any, weights: str = "int8"):
    """The ONNX ModelProto of a transformers Llama/Qwen2/Mistral-style causal LM (see the module docstring)."""
    from onnx import TensorProto, helper

    # 1. Check the model and the format.
    if weights not in WEIGHT_FORMATS:
        raise ValueError(f"weights must be one of {WEIGHT_FORMATS}, got {weights!r}")
    config = model.config
    reason = supports(config)
    if reason:
        raise ValueError(reason)
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_size = head_dim(config)
    eps = float(config.rms_norm_eps)
    g = _Graph(weights)
    # 2. Inputs: token ids, the KV cache of each layer, and where the sequence ends.
    layers = model.model.layers
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "sequence"]),
              helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, [1]),
              helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, [])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, config.vocab_size])]
    for i in range(len(layers)):
        for part in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past.{i}.{part}", TensorProto.FLOAT,
                                                        [1, kv_heads, "past_sequence", head_size]))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{part}", TensorProto.FLOAT,
                                                         [1, kv_heads, "total_sequence", head_size]))
    cos, sin = rotary_tables(config)
    g.constant("cos_cache", cos)
    g.constant("sin_cache", sin)
    # 3. Embeddings, then each layer: attention and MLP, each after an RMSNorm that also adds the residual.
    residual = g.node("Gather", [g.constant("embed_tokens", _array(model.model.embed_tokens.weight)), "input_ids"],
                      ["embeddings"], "embed")[0]
    branch = None  # the last block's output, added to the residual by the next norm
    for i, layer in enumerate(layers):
        attn, mlp = layer.self_attn, layer.mlp
        normed, residual = _rms_norm(g, residual, branch, _array(layer.input_layernorm.weight), eps, f"l{i}/norm1")
        qkv_weight = np.concatenate([_array(attn.q_proj.weight), _array(attn.k_proj.weight),
                                     _array(attn.v_proj.weight)])
        qkv_bias = None
        if attn.q_proj.bias is not None:
            qkv_bias = np.concatenate([_array(attn.q_proj.bias), _array(attn.k_proj.bias), _array(attn.v_proj.bias)])
        qkv = g.linear(normed, qkv_weight, qkv_bias, f"l{i}/qkv")
        attended = g.node("GroupQueryAttention",
                          [qkv, "", "", f"past.{i}.key", f"past.{i}.value", "seqlens_k", "total_sequence_length",
                           "cos_cache", "sin_cache"],
                          [f"l{i}/attn", f"present.{i}.key", f"present.{i}.value"], f"l{i}/gqa",
                          domain="com.microsoft", num_heads=heads, kv_num_heads=kv_heads, do_rotary=1,
                          rotary_interleaved=0, scale=1.0 / math.sqrt(head_size))[0]
        branch = g.linear(attended, _array(attn.o_proj.weight), _array(attn.o_proj.bias), f"l{i}/o")
        normed, residual = _rms_norm(g, residual, branch, _array(layer.post_attention_layernorm.weight), eps,
                                     f"l{i}/norm2")
        size = mlp.gate_proj.weight.shape[0]
        gate_up = g.linear(normed, np.concatenate([_array(mlp.gate_proj.weight), _array(mlp.up_proj.weight)]),
                           None if mlp.gate_proj.bias is None else np.concatenate(
                               [_array(mlp.gate_proj.bias), _array(mlp.up_proj.bias)]), f"l{i}/gate_up")
        gate, up = g.node("Split", [gate_up, g.constant(f"l{i}/split", np.array([size, size], np.int64))],
                          [f"l{i}/gate", f"l{i}/up"], f"l{i}/split", axis=-1)
        sigmoid = g.node("Sigmoid", [gate], [f"l{i}/sigmoid"], f"l{i}/sigmoid")[0]
        silu = g.node("Mul", [gate, sigmoid], [f"l{i}/silu"], f"l{i}/silu")[0]
        product = g.node("Mul", [silu, up], [f"l{i}/swiglu"], f"l{i}/swiglu")[0]
        branch = g.linear(product, _array(mlp.down_proj.weight), _array(mlp.down_proj.bias), f"l{i}/down")
    # 4. The final norm, the last position only, and the logits.
    normed, _ = _rms_norm(g, residual, branch, _array(model.model.norm.weight), eps, "final_norm")
    last = g.node("Slice", [normed, g.constant("last/start", np.array([-1], np.int64)),
                            g.constant("last/end", np.array([2**62], np.int64)),
                            g.constant("last/axis", np.array([1], np.int64))], ["last_hidden"], "last")[0]
    head = model.get_output_embeddings()
    logits = g.linear(last, _array(head.weight), _array(getattr(head, "bias", None)), "lm_head")
    g.node("Reshape", [logits, g.constant("logits/shape", np.array([1, config.vocab_size], np.int64))],
           ["logits"], "logits")
    graph = helper.make_graph(g.nodes, "decoder", inputs, outputs, g.initializers)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets, producer_name="transformer-playground", ir_version=IR_VERSION)


def _rms_norm(g: _Graph, residual: str, branch: str | None, weight: np.ndarray, eps: float,
              name: str) -> tuple[str, str]:
    """RMSNorm of residual + branch: (normalized, the new residual). The first norm has no branch to add."""
    gamma = g.constant(f"{name}.weight", weight)
    if branch is None:
        return g.node("SimplifiedLayerNormalization", [residual, gamma], [f"{name}/out"], name, axis=-1,
                      epsilon=eps, stash_type=1)[0], residual
    out = g.node("SkipSimplifiedLayerNormalization", [residual, branch, gamma],
                 [f"{name}/out", "", "", f"{name}/sum"], name, domain="com.microsoft", epsilon=eps)
    return out[0], out[3]


def build_decoder(model: Any, folder: str | os.PathLike, weights: str = "int8") -> Path:
    """Write `model` as model.onnx (+ its external weights) and playground.json into `folder`."""
    import onnx

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    proto = build_graph(model, weights)
    onnx.save_model(proto, str(folder / MODEL_FILE), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=MODEL_FILE + ".data", size_threshold=1024)
    config = model.config
    info = {"builder_version": BUILDER_VERSION, "weights": weights, "config": config.to_dict(),
            "eos_token_id": getattr(model.generation_config, "eos_token_id", None)}
    (folder / INFO_FILE).write_text(json.dumps(info, indent=1, default=str))
    return folder


# --------------------------------------------------------------------------------------------------------
# The store: one build per (weights, format), made once
# --------------------------------------------------------------------------------------------------------

_build_lock = threading.Lock()


def fingerprint(source: str | os.PathLike, weights: str) -> str:
    """A key for a build: the source folder's config files (contents) and weight files (name, size, mtime),
    the format and the builder's version."""
    folder = Path(source)
    parts = [str(BUILDER_VERSION), weights, str(folder.resolve())]
    for path in sorted(folder.glob("*")):
        if path.is_file() and path.suffix == ".json":
            parts.append(f"{path.name}:{hashlib.sha256(path.read_bytes()).hexdigest()}")
        elif path.is_file() and path.suffix in (".safetensors", ".bin"):
            stat = path.stat()
            parts.append(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def stored_build(source: str | os.PathLike, weights: str, load_model: Callable[[], Any], store: str | os.PathLike,
                 name: str | None = None, build: Callable[[Any, Path, str], Any] | None = None) -> Path:
    """The folder of `source`'s build in `weights` under `store`, building it (with `load_model()`, which
    returns the torch model) when missing. Written to a temporary folder and renamed: never half a build.
    `build(model, folder, weights)` writes the build and its INFO_FILE (default: `build_decoder`; the CLIP
    image tower passes shared.clip.export_image_tower)."""
    if weights not in WEIGHT_FORMATS:
        raise ValueError(f"weights must be one of {WEIGHT_FORMATS}, got {weights!r}")
    target = Path(store) / f"{name or Path(source).name}-{weights}-{fingerprint(source, weights)}"
    with _build_lock:
        if (target / INFO_FILE).is_file():
            return target
        write_folder(target, lambda scratch: (build or build_decoder)(load_model(), scratch, weights), INFO_FILE)
        for old in target.parent.glob(f"{target.name.rsplit('-', 1)[0]}-*"):  # builds of older weights
            if old != target and old.is_dir() and (old / INFO_FILE).is_file():
                shutil.rmtree(old, ignore_errors=True)
    return target


# --------------------------------------------------------------------------------------------------------
# Running it
# --------------------------------------------------------------------------------------------------------


@dataclass
class DecoderState:
    """One sequence's KV cache (ONNX Runtime values, never copied to numpy) and its length."""

    cache: list[Any]
    length: int


class OnnxCausalLM:
    """An ONNX Runtime session over a folder written by `build_decoder`. Thread-safe: each sequence keeps its
    own DecoderState, and ONNX Runtime runs concurrent calls of one session."""

    def __init__(self, folder: str | os.PathLike, threads: int | None = None):
        import onnxruntime as ort
        from transformers import AutoConfig, GenerationConfig

        self.folder = Path(folder)
        info = json.loads((self.folder / INFO_FILE).read_text())
        if info.get("builder_version") != BUILDER_VERSION:
            raise ValueError(f"{self.folder} was built by another version of the builder; rebuild it")
        self.weights: str = info["weights"]
        config = dict(info["config"])
        self.config = AutoConfig.for_model(config.pop("model_type"), **config)
        self.generation_config = GenerationConfig.from_model_config(self.config)
        if info.get("eos_token_id") is not None:
            self.generation_config.eos_token_id = info["eos_token_id"]
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(self.folder / MODEL_FILE), options,
                                            providers=["CPUExecutionProvider"])
        self.layers = self.config.num_hidden_layers
        self.kv_shape = (1, self.config.num_key_value_heads, 0, head_dim(self.config))
        self.nbytes = sum(p.stat().st_size for p in self.folder.iterdir() if p.name.startswith(MODEL_FILE))
        self.device = "cpu"
        self.dtype = "float32" if self.weights == "fp32" else f"{self.weights} weights"

    def _run(self, ids: Sequence[int], cache: list[Any], past: int) -> tuple[np.ndarray, DecoderState]:
        total = past + len(ids)
        binding = self.session.io_binding()
        binding.bind_cpu_input("input_ids", np.asarray([ids], dtype=np.int64))
        binding.bind_cpu_input("seqlens_k", np.asarray([total - 1], dtype=np.int32))
        binding.bind_cpu_input("total_sequence_length", np.asarray(total, dtype=np.int32))
        for i in range(self.layers):
            binding.bind_ortvalue_input(f"past.{i}.key", cache[2 * i])
            binding.bind_ortvalue_input(f"past.{i}.value", cache[2 * i + 1])
        binding.bind_output("logits")
        for i in range(self.layers):  # ONNX Runtime allocates the grown cache; it stays an OrtValue
            binding.bind_output(f"present.{i}.key")
            binding.bind_output(f"present.{i}.value")
        self.session.run_with_iobinding(binding)
        values = binding.get_outputs()
        return values[0].numpy()[0], DecoderState(list(values[1:]), total)

    def prefill(self, ids: Sequence[int]) -> tuple[np.ndarray, DecoderState]:
        """The logits (float32, one per vocabulary entry) of the token after `ids`, and the state to go on."""
        import onnxruntime as ort

        if not ids:
            raise ValueError("the prompt has no tokens")
        if len(ids) > self.config.max_position_embeddings:
            raise ValueError(f"the prompt has {len(ids)} tokens; the model takes at most "
                             f"{self.config.max_position_embeddings}")
        empty = ort.OrtValue.ortvalue_from_numpy(np.zeros(self.kv_shape, dtype=np.float32))
        return self._run(list(ids), [empty] * (2 * self.layers), 0)

    def extend(self, state: DecoderState, ids: Sequence[int]) -> tuple[np.ndarray, DecoderState]:
        """The logits after `state`'s sequence followed by `ids`, and the longer sequence's state; `state` itself
        is left as it was (ONNX Runtime writes the grown cache to new values), so many continuations can share
        one prefix: the same logits as prefill(prefix + ids), bit for bit, at the cost of `ids` alone."""
        if not ids:
            raise ValueError("nothing to extend the sequence with")
        if state.length + len(ids) > self.config.max_position_embeddings:
            raise ValueError(f"the sequence would have {state.length + len(ids)} tokens; the model takes at most "
                             f"{self.config.max_position_embeddings}")
        return self._run(list(ids), state.cache, state.length)

    def step(self, state: DecoderState, token: int) -> np.ndarray:
        """The logits after appending `token` to the sequence of `state` (updated in place)."""
        if state.length >= self.config.max_position_embeddings:
            raise ValueError(f"the sequence reached the model's {self.config.max_position_embeddings} positions")
        logits, new = self._run([int(token)], state.cache, state.length)
        state.cache, state.length = new.cache, new.length
        return logits
