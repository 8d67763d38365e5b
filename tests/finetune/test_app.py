"""The fine-tuning page through gradio_client, and the same training as an `accelerate launch` script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError

from spaces.finetune import runs
from tests.conftest import REPO_ROOT

MODEL = "local:all-minilm-l6-v2"


def settings(**changes) -> dict:
    """The training form by name (the /finetune_train parameters): a small, fast run unless changed."""
    small = dict(model=MODEL, data_source="movie sentences", upload=None, method="full", freeze_layers=3,
                 lora_targets=["query", "value"], learning_rate=1e-4, epochs=4.0, max_steps=0, batch_size=16,
                 max_length=64, train_size=32, validation_size=32, test_size=64, other_domain_size=16)
    return {**small, **changes}


def run_id_of(outputs) -> str:
    return outputs[5]["value"]


def test_parameters_and_command_before_training(client):
    text = client.predict(model=MODEL, method="lora", freeze_layers=3, lora_r=8, lora_alpha=16, lora_dropout=0.1,
                          lora_targets=["query", "value"], api_name="/finetune_parameters")
    assert "74,498 trainable of 22,788,484 parameters (**0.33%**)" in text
    command = client.predict(**settings(method="lora"), api_name="/finetune_command")
    assert "accelerate launch --num_processes 1 -m spaces.finetune.train" in command
    assert "--method lora" in command and "--multi_gpu --num_processes 2" in command


def test_short_run_lowers_the_loss_and_writes_a_loadable_model(client):
    from transformers import AutoModelForSequenceClassification

    outputs = client.predict(**settings(), api_name="/finetune_train")
    run = runs.RUNS[run_id_of(outputs)]
    assert run.status == "done" and run.step == 8
    assert sum(run.losses[-2:]) < sum(run.losses[:2])  # 32 sentences, 4 epochs: the loss must fall
    results = json.loads((run.folder / "results.json").read_text())
    assert results["trainable_parameters"] == results["total_parameters"]
    assert set(results["test_accuracy"]) == {"movies", "tweets", "amazon", "nyt"}
    model = AutoModelForSequenceClassification.from_pretrained(run.folder / "model")
    assert model.config.id2label == {0: "negative", 1: "positive"}
    probabilities = client.predict(run.id, "A gorgeous, witty, seductive movie.", api_name="/finetune_classify")
    assert {c["label"] for c in probabilities["confidences"]} == {"negative", "positive"}
    table = outputs[3]
    assert table["data"][-1][0] == run.id and "test movies" in table["headers"]


def test_stop_mid_run_keeps_a_loadable_checkpoint(own_client):
    client = own_client
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from shared.assets import ensure

    job = client.submit(**settings(method="lora", train_size=0, epochs=1, learning_rate=1e-3),
                        api_name="/finetune_train")
    deadline = time.time() + 120
    while not any(o and runs.RUNS.get(run_id_of(o)) and runs.RUNS[run_id_of(o)].step >= 2 for o in job.outputs()):
        assert time.time() < deadline and not job.done(), "training did not start"
        time.sleep(0.5)
    run = runs.RUNS[run_id_of(job.outputs()[-1])]
    assert f"**{run.id}** — stopped: step" in client.predict(api_name="/finetune_stop")  # answered once ended
    assert run.status == "stopped" and run.step < run.total_steps
    results = json.loads((run.folder / "results.json").read_text())
    assert results["stopped"] is True and results["best_step"] >= 1
    # peft's way back: the base model, then the saved adapter (and classifier) on top.
    base = AutoModelForSequenceClassification.from_pretrained(ensure("all-minilm-l6-v2"), num_labels=2)
    reloaded = PeftModel.from_pretrained(base, run.folder / "adapter").eval()
    trained = run.results["model"].eval()
    inputs = run.results["tokenizer"]("What a fine film.", return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(reloaded(**inputs).logits, trained(**inputs).logits, atol=1e-5)


def test_use_the_result_save_zip_onnx(client):
    import onnxruntime

    run_id = run_id_of(client.predict(**settings(method="head", train_size=16, epochs=1), api_name="/finetune_train"))
    assert "local:my-head" in client.predict(run_id, "my-head", api_name="/finetune_save")
    from shared.registry import choices

    assert "local:my-head" in choices("classifier")
    assert client.predict(run_id, api_name="/finetune_zip").endswith(".zip")
    archive = client.predict(run_id, api_name="/finetune_onnx")
    assert archive.endswith(".zip") and (runs.RUNS[run_id].folder / "onnx" / "model.onnx").exists()
    onnxruntime.InferenceSession(str(runs.RUNS[run_id].folder / "onnx" / "model.onnx"))
    with pytest.raises(AppError, match="local model names use"):
        client.predict(run_id, "../escape", api_name="/finetune_save")


@pytest.mark.parametrize("content, message", [
    ("sentence,label\nhello,1\n", "missing: text"),
    ("text,label\n" + "same,1\n" * 30, "same label"),
])
def test_bad_csv_upload_gets_a_clear_message(client, tmp_path, content, message):
    path = tmp_path / "upload.csv"
    path.write_text(content)
    with pytest.raises(AppError, match=message):
        client.predict(**settings(data_source="upload CSV", upload=handle_file(str(path))), api_name="/finetune_train")


def test_bad_model_and_settings_are_refused(client):
    with pytest.raises(AppError, match="is a path or URL"):
        client.predict(**settings(model="/root"), api_name="/finetune_train")
    with pytest.raises(AppError, match="learning rate must be in"):
        client.predict(**settings(learning_rate=5.0), api_name="/finetune_train")


def test_accelerate_launch_two_cpu_processes(tmp_path):
    command = [os.path.join(os.path.dirname(sys.executable), "accelerate"), "launch", "--multi_gpu",
               "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "spaces.finetune.train", "--method", "lora", "--max-steps", "3", "--train-size", "64",
               "--validation-size", "32", "--test-size", "32", "--other-domain-size", "16", "--batch-size", "8", "--output-dir", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["processes"] == 2 and results["steps"] == 3
    assert results["samples"] == 3 * 8 * 2  # samples/s counts both processes' sentences (full batches here)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()


def test_a_saved_classifier_is_offered_and_loads_after_a_restart():
    """Save from one app process, start a second: the model is offered and loads (its manifest re-registers
    it); no in-memory state survives between the two."""
    import shutil
    import uuid

    from gradio_client import Client

    from shared.launch import app_process
    from shared.registry import MANIFEST, models_dir

    name = f"restart-check-{uuid.uuid4().hex[:6]}"
    try:
        with app_process(["app.py"]) as (_, url, _):
            first = Client(url, verbose=False)
            run_id = run_id_of(first.predict(**settings(method="head", train_size=16, epochs=1),
                                             api_name="/finetune_train"))
            assert f"local:{name}" in first.predict(run_id=run_id, name=name, api_name="/finetune_save")
        manifest = json.loads((models_dir() / name / MANIFEST).read_text())
        assert manifest["role"] == "classifier" and manifest["source_run"] == run_id
        with app_process(["app.py"]) as (_, url, _):
            second = Client(url, verbose=False)
            offered = second.predict(role="classifier", api_name="/home_models")
            assert f"local:{name}" in [c[0] if isinstance(c, (list, tuple)) else c for c in offered["choices"]]
            status, *_ = second.predict(role="classifier", choice=f"local:{name}", api_name="/home_load")
            assert f"local:{name} (local) is loaded for the classifier role" in status
    finally:
        shutil.rmtree(models_dir() / name, ignore_errors=True)
