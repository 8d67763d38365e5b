"""Train a BERT-family sentence classifier: the fine-tuning page's training loop, also a script.

    python -m spaces.finetune.train --method lora --max-steps 300 --output-dir runs/lora
    python -m spaces.finetune.train --teacher runs/full/model --student-layers 3 --output-dir runs/student  # distil
    accelerate launch --multi_gpu --num_processes 2 -m spaces.finetune.train ...       # DDP (GPUs, or CPUs)
    accelerate launch --config_file fsdp.yaml -m spaces.finetune.train ...                  # FSDP if the config asks

Written with Accelerate (`prepare`, `backward`, `gather_for_metrics`, `unwrap_model`, `main_process_first`)
so `accelerate launch` scales it unchanged. Writes `results.json` (config, history, parameter counts,
wall time, accuracies) and the best model (for LoRA: the adapter, loadable with PeftModel.from_pretrained)
to --output-dir. The page calls `train()` in a thread with an `on_event` callback and a stop Event.

Distillation (DistilBERT's recipe, small): with --teacher (a fine-tuned sequence classifier), the student starts
from the teacher itself with every other transformer layer kept (--student-layers 3 of 6: layers 0, 2, 4) and
its classifier head copied, and learns from the teacher's temperature-softened probabilities as well as from
the labels: loss = alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * cross-entropy (`distillation_loss`).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from spaces.finetune import logic


@dataclass
class TrainConfig:
    model: str = "local:all-minilm-l6-v2"  # hub id, or a local: name from the registry's allow-list
    data: str = "movies"  # "movies", "csv:<path>" (script only) or "hub:<dataset id>"
    method: str = "full"  # one of logic.METHODS
    freeze_layers: int = 3  # method "freeze": embeddings plus this many bottom layers are frozen
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    lora_targets: tuple[str, ...] = ("query", "key", "value", "dense")
    learning_rate: float = 1e-4
    epochs: float = 1.0  # may be fractional; --max-steps caps it
    max_steps: int = 0  # 0 = no cap beyond the epochs
    batch_size: int = 32
    max_length: int = 64  # tokens; longer sentences are truncated
    seed: int = 0
    bf16: bool = False  # bf16 autocast (CPU with AVX-512/AMX, or a GPU that supports it)
    train_size: int = 0  # 0 = the whole training split
    validation_size: int = 300
    test_size: int = 0  # in-domain test examples; 0 = the whole fixed test split
    other_domain_size: int = 200  # movies only: examples per out-of-domain test set (tweets, amazon, nyt)
    eval_every: int = 0  # steps between validations; 0 = about 5 per run
    warmup_ratio: float = 0.06
    teacher: str = ""  # distil from this fine-tuned classifier (a folder, local: label or hub id); "" = no teacher
    distill_temperature: float = 2.0  # softens both models' probabilities in the distillation term
    distill_alpha: float = 0.5  # weight of the distillation term (x T^2) against the labels' cross-entropy
    student_layers: int = 0  # keep this many evenly spaced transformer layers (0 = all of them)
    output_dir: str = ""  # where the best model and results.json go; empty = do not save
    label_names: tuple[str, ...] = field(default_factory=tuple)  # filled from the data

    def check(self) -> None:
        if self.method not in logic.METHODS:
            raise ValueError(f"method must be one of {logic.METHODS}, got {self.method!r}")
        if not 0 < self.learning_rate <= 1:
            raise ValueError(f"learning rate must be in (0, 1], got {self.learning_rate}")
        if not 0 < self.epochs <= 100:
            raise ValueError(f"epochs must be in (0, 100], got {self.epochs}")
        if not 1 <= self.batch_size <= 512:
            raise ValueError(f"batch size must be between 1 and 512, got {self.batch_size}")
        if not 8 <= self.max_length <= 512:
            raise ValueError(f"max length must be between 8 and 512 tokens, got {self.max_length}")
        if self.max_steps < 0 or self.eval_every < 0:
            raise ValueError("max steps and eval every must be >= 0")
        if not 0 < self.distill_temperature <= 100:
            raise ValueError(f"distillation temperature must be in (0, 100], got {self.distill_temperature}")
        if not 0 <= self.distill_alpha <= 1:
            raise ValueError(f"distillation alpha must be between 0 and 1, got {self.distill_alpha}")
        if self.student_layers < 0:
            raise ValueError(f"student layers must be >= 0 (0 keeps every layer), got {self.student_layers}")


# The page's Train button (and benchmarks/finetune.py) start from these: every transformer layer trains, the
# embeddings (half of MiniLM's weights) stay frozen, which makes a step ~1.3x faster than full fine-tuning at no
# cost in accuracy here; 160 steps of 32 sentences (60% of an epoch). Measured by benchmarks/finetune.py against
# the goal of >= 82% test accuracy within 3 minutes on 2 CPU cores.
PAGE_DEFAULTS = TrainConfig(method="freeze", freeze_layers=0, learning_rate=2e-4, max_steps=160, epochs=1.0,
                            train_size=0)


def command_line(config: TrainConfig, processes: int = 1) -> str:
    """The shell command that runs this configuration as a script (what the page shows)."""
    defaults = TrainConfig()
    # `--multi_gpu` starts the processes with torchrun; on a machine without GPUs they train on the CPU (gloo).
    parts = ["accelerate launch", "--multi_gpu" if processes > 1 else "", f"--num_processes {processes}",
             "-m spaces.finetune.train"]
    for name, value in asdict(config).items():
        if name == "label_names" or value == getattr(defaults, name):
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + name.replace("_", "-"))
        elif isinstance(value, (tuple, list)):
            parts.append(f"{flag} {' '.join(value)}")
        else:
            parts.append(f"{flag} {value}")
    return " ".join(p for p in parts if p)


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(description="Fine-tune a BERT-family classifier (accelerate-ready).")
    parser.add_argument("--model", default=defaults.model, help="hub id, or local:<name> from the allow-list")
    parser.add_argument("--data", default=defaults.data, help="movies | csv:<path> | hub:<dataset id>")
    parser.add_argument("--method", default=defaults.method, choices=logic.METHODS, help="which weights train")
    parser.add_argument("--freeze-layers", type=int, default=defaults.freeze_layers,
                        help="method freeze: how many bottom transformer layers to freeze (plus embeddings)")
    parser.add_argument("--lora-r", type=int, default=defaults.lora_r, help="LoRA rank")
    parser.add_argument("--lora-alpha", type=int, default=defaults.lora_alpha, help="LoRA scaling alpha")
    parser.add_argument("--lora-dropout", type=float, default=defaults.lora_dropout, help="LoRA dropout")
    parser.add_argument("--lora-targets", nargs="+", default=list(defaults.lora_targets),
                        help="module names LoRA wraps (e.g. query key value dense)")
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate, help="peak learning rate")
    parser.add_argument("--epochs", type=float, default=defaults.epochs, help="passes over the training data")
    parser.add_argument("--max-steps", type=int, default=defaults.max_steps, help="cap on optimizer steps (0: none)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="examples per step per process")
    parser.add_argument("--max-length", type=int, default=defaults.max_length, help="tokens per sentence")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed for subsampling, shuffling, init")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=defaults.bf16,
                        help="bf16 autocast")
    parser.add_argument("--train-size", type=int, default=defaults.train_size, help="training examples (0: all)")
    parser.add_argument("--validation-size", type=int, default=defaults.validation_size,
                        help="validation examples (0: all)")
    parser.add_argument("--test-size", type=int, default=defaults.test_size,
                        help="in-domain test examples (0: the whole test split)")
    parser.add_argument("--other-domain-size", type=int, default=defaults.other_domain_size,
                        help="movies: examples per out-of-domain test set (0: all)")
    parser.add_argument("--eval-every", type=int, default=defaults.eval_every,
                        help="steps between validations (0: about 5 per run)")
    parser.add_argument("--warmup-ratio", type=float, default=defaults.warmup_ratio, help="share of steps warming up")
    parser.add_argument("--teacher", default=defaults.teacher,
                        help="distil from this fine-tuned classifier (folder, local:<name> or hub id); the student "
                             "starts from it and --model is not used")
    parser.add_argument("--distill-temperature", type=float, default=defaults.distill_temperature,
                        help="temperature that softens teacher and student probabilities in the distillation loss")
    parser.add_argument("--distill-alpha", type=float, default=defaults.distill_alpha,
                        help="weight of the distillation loss (times T^2); 1 - alpha weighs the labels' loss")
    parser.add_argument("--student-layers", type=int, default=defaults.student_layers,
                        help="keep this many evenly spaced transformer layers, e.g. 3 of 6 keeps 0, 2, 4 (0: all)")
    parser.add_argument("--output-dir", default=defaults.output_dir, help="where the model and results.json go")
    args = parser.parse_args(argv)
    values = vars(args)
    values["lora_targets"] = tuple(values["lora_targets"])
    config = TrainConfig(**values)
    config.check()
    return config


def load_dataset(config: TrainConfig) -> logic.Dataset:
    sizes = (config.train_size, config.validation_size, config.test_size, config.seed)
    if config.data == "movies":
        return logic.movie_dataset(*sizes, other_domain_size=config.other_domain_size)
    if config.data.startswith("csv:"):
        return logic.csv_dataset(config.data[4:], *sizes)
    if config.data.startswith("hub:"):
        return logic.hub_dataset(config.data[4:], *sizes)
    raise ValueError(f"data must be movies, csv:<path> or hub:<dataset id>, got {config.data!r}")


def create_model(location: str, num_labels: int, seed: int):
    """A fresh classifier from the base weights; the new head's initial weights follow `seed`."""
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_pretrained(
        location, num_labels=num_labels, dtype=torch.float32, trust_remote_code=False)


def kept_layers(total: int, keep: int) -> list[int]:
    """Which of `total` layers a student with `keep` layers starts from: evenly spaced from the bottom, as
    DistilBERT (6 of 12: 0, 2, 4, ...; 3 of 6: 0, 2, 4)."""
    if not 1 <= keep <= total:
        raise ValueError(f"student layers must be between 1 and the model's {total}, got {keep}")
    return [i * total // keep for i in range(keep)]


def create_student(model, layers: int):
    """A copy of the classifier `model` with only `kept_layers(its layers, layers)` of its transformer layers;
    embeddings, pooler and classifier head are copied as they are. `model` itself is left unchanged."""
    import torch

    # 1. Which layers stay, and under which name the model keeps its list of layers.
    _, teacher_layers = logic.encoder_parts(model)
    kept = kept_layers(len(teacher_layers), layers)
    prefix = next(name for name, module in model.named_modules()
                  if isinstance(module, torch.nn.ModuleList) and len(module) and module[0] is teacher_layers[0])
    # 2. The same architecture with fewer layers (DistilBERT's config maps num_hidden_layers to n_layers).
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = layers
    student = type(model)(config)
    # 3. Copy the weights: kept layer kept[j] becomes layer j; everything outside the layers is copied whole.
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith(prefix + "."):
            index, rest = key[len(prefix) + 1:].split(".", 1)
            if int(index) not in kept:
                continue
            key = f"{prefix}.{kept.index(int(index))}.{rest}"
        state[key] = value.detach().clone()
    student.load_state_dict(state, strict=True)
    return student.to(next(model.parameters()).dtype)


def load_teacher(teacher: str, num_labels: int):
    """The fine-tuned classifier to distil from, in eval mode with no gradients: a folder, or what the registry
    resolves a local: label or hub id to for the classifier role."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from shared.registry import resolve

    location = teacher if Path(teacher).is_dir() else resolve("classifier", teacher).location
    model = AutoModelForSequenceClassification.from_pretrained(location, dtype=torch.float32, trust_remote_code=False)
    if model.config.num_labels != num_labels:
        raise ValueError(f"the teacher {teacher!r} has {model.config.num_labels} labels; the data has {num_labels}")
    return model.eval().requires_grad_(False), location


def distillation_loss(student_logits, teacher_logits, labels, temperature: float, alpha: float):
    """alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * cross-entropy(student, labels).

    The T^2 keeps the soft term's gradients the same size whatever the temperature (Hinton et al., 2015); the
    KL is averaged over the batch, like the cross-entropy."""
    import torch.nn.functional as F

    soft = F.kl_div(F.log_softmax(student_logits.float() / temperature, dim=-1),
                    F.log_softmax(teacher_logits.float() / temperature, dim=-1), reduction="batchmean",
                    log_target=True)
    hard = F.cross_entropy(student_logits.float(), labels)
    return alpha * temperature**2 * soft + (1 - alpha) * hard


class LengthGroupedBatches:
    """Shuffled batches of sentences of similar length, so a batch pads to little more than its own sentences.

    Like transformers' `group_by_length`: shuffle, cut into windows of 50 batches, sort each window by length,
    split into batches, shuffle the batches. Each epoch draws a new order from `seed` + epoch.
    """

    def __init__(self, rows: list, batch_size: int, seed: int, window: int = 50):
        self.lengths = [len(text) for text, _ in rows]
        self.batch_size, self.seed, self.window, self.epoch = batch_size, seed, window, 0

    def __iter__(self):
        import torch

        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        span = self.batch_size * self.window
        batches = []
        for start in range(0, len(order), span):
            window = sorted(order[start:start + span], key=self.lengths.__getitem__)
            batches += [window[i:i + self.batch_size] for i in range(0, len(window), self.batch_size)]
        for index in torch.randperm(len(batches), generator=generator).tolist():
            yield batches[index]

    def __len__(self) -> int:
        span = self.batch_size * self.window
        full, rest = divmod(len(self.lengths), span)
        return full * self.window + math.ceil(rest / self.batch_size)


def by_length(rows: list) -> list:
    """Rows sorted by text length: evaluation batches then pad little (order does not change accuracy)."""
    return sorted(rows, key=lambda row: len(row[0]))


class Collate:
    """Tokenizes a list of (text, label) with dynamic padding."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, rows):
        import torch

        encoded = self.tokenizer([text for text, _ in rows], padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt")
        encoded["labels"] = torch.tensor([label for _, label in rows])
        return encoded


def autocast(accelerator, enabled: bool):
    import torch

    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=accelerator.device.type, dtype=torch.bfloat16)


def evaluate(model, loader, accelerator, bf16: bool) -> tuple[float, float]:
    """(accuracy, mean loss) over a prepared loader, gathered across processes."""
    import torch

    model.eval()
    correct = count = 0
    loss_sum = 0.0
    with torch.no_grad():
        for batch in loader:
            with autocast(accelerator, bf16):
                output = model(**batch)
            predictions, labels, losses = accelerator.gather_for_metrics(
                (output.logits.argmax(-1), batch["labels"], output.loss.detach().reshape(1).float()))
            correct += (predictions == labels).sum().item()
            count += labels.numel()
            loss_sum += losses.mean().item() * labels.numel()
    model.train()
    return (correct / count if count else 0.0), (loss_sum / count if count else 0.0)


def trainable_state(model) -> dict:
    """A CPU copy of the weights that train (all of them for full fine-tuning): the best checkpoint so far."""
    names = {name for name, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items() if k in names}


def train(config: TrainConfig, dataset: logic.Dataset | None = None, location: str | None = None,
          on_event: Callable[[dict], None] | None = None, stop: threading.Event | None = None) -> dict:
    """Train, validate every `eval_every` steps, keep the best, test it, save it. Returns the results dict.

    `on_event` receives {"type": "step"|"eval"|"test"|"done", ...} as training goes; setting `stop` ends
    training at the next step, and the best checkpoint so far is kept, tested and saved. With `config.teacher`
    the model is a student made from the teacher (its tokenizer too), and `location` is not used.
    """
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader
    from transformers import AutoTokenizer, get_linear_schedule_with_warmup

    from shared.device import pick_device
    from shared.registry import resolve

    # 1. Check the inputs and gather what the run needs.
    config.check()
    stop = stop or threading.Event()
    # On a machine without a GPU, cpu=True lets `accelerate launch --multi_gpu` (torchrun) run DDP over gloo.
    accelerator = Accelerator(cpu=pick_device() == "cpu")
    emit = on_event if on_event and accelerator.is_main_process else (lambda event: None)
    set_seed(config.seed)
    if location is None and not config.teacher:  # a student starts from its teacher, not from config.model
        location = resolve("encoder", config.model).location
    with accelerator.main_process_first():
        dataset = dataset or load_dataset(config)
    config.label_names = tuple(dataset.label_names)

    # 2. Build the model (with a teacher: the student, made from the teacher) and choose what trains.
    teacher = None
    if config.teacher:
        teacher, location = load_teacher(config.teacher, len(dataset.label_names))
        model = create_student(teacher, config.student_layers or len(logic.encoder_parts(teacher)[1]))
        teacher.to(accelerator.device)  # not prepared: it never trains, so DDP/FSDP need not wrap it
    else:
        model = create_model(location, len(dataset.label_names), config.seed)
        if config.student_layers:
            model = create_student(model, config.student_layers)
    tokenizer = AutoTokenizer.from_pretrained(location)
    model = logic.apply_method(model, config.method, config.freeze_layers, config.lora_r, config.lora_alpha,
                               config.lora_dropout, tuple(config.lora_targets))
    trainable, total = logic.count_parameters(model)
    emit({"type": "parameters", "trainable": trainable, "total": total})

    # 3. Data loaders, optimizer and schedule, prepared by Accelerate (sharded across processes).
    collate = Collate(tokenizer, config.max_length)
    train_loader = DataLoader(dataset.train, collate_fn=collate,
                              batch_sampler=LengthGroupedBatches(dataset.train, config.batch_size, config.seed))
    validation_loader = DataLoader(by_length(dataset.validation), batch_size=64, collate_fn=collate)
    steps_per_epoch = math.ceil(len(dataset.train) / (config.batch_size * accelerator.num_processes))
    total_steps = max(1, math.ceil(steps_per_epoch * config.epochs))
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)
    eval_every = config.eval_every or max(1, total_steps // 5)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate,
                                  weight_decay=0.01)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), total_steps)
    model, optimizer, train_loader, validation_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, validation_loader, scheduler)

    # 4. The loop: one optimizer step per batch, validation every `eval_every` steps, best weights kept.
    history = {"step": [], "loss": [], "eval_step": [], "validation_accuracy": [], "validation_loss": []}
    best = {"accuracy": -1.0, "step": 0, "state": None}
    started = time.perf_counter()
    step, stopped, samples = 0, False, 0  # samples: sentences trained on, over every process
    model.train()

    validation = {"seconds": 0.0}  # time spent validating (and keeping the best weights): not training

    def validate() -> None:
        validation_started = time.perf_counter()
        accuracy, loss = evaluate(model, validation_loader, accelerator, config.bf16)
        history["eval_step"].append(step)
        history["validation_accuracy"].append(accuracy)
        history["validation_loss"].append(loss)
        if accuracy > best["accuracy"]:
            best.update(accuracy=accuracy, step=step, state=trainable_state(accelerator.unwrap_model(model)))
        validation["seconds"] += time.perf_counter() - validation_started
        emit({"type": "eval", "step": step, "accuracy": accuracy, "loss": loss, "best": best["accuracy"]})

    while step < total_steps and not stopped:
        for batch in train_loader:
            if stop.is_set():
                stopped = True
                break
            with autocast(accelerator, config.bf16):
                if teacher is None:
                    loss = model(**batch).loss
                else:
                    inputs = {key: value for key, value in batch.items() if key != "labels"}
                    with torch.no_grad():
                        teacher_logits = teacher(**inputs).logits
                    loss = distillation_loss(model(**inputs).logits, teacher_logits, batch["labels"],
                                             config.distill_temperature, config.distill_alpha)
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            # One gather for both: each process's loss and how many sentences it trained on (a window's last
            # batch is smaller than batch_size, so samples/s counts the sentences, not steps x batch size).
            per_process = accelerator.gather(torch.stack([loss.detach().float(), loss.new_tensor(
                float(batch["labels"].numel()))]).reshape(1, 2))
            mean_loss = per_process[:, 0].mean().item()
            samples += int(per_process[:, 1].sum().item())
            history["step"].append(step)
            history["loss"].append(mean_loss)
            elapsed = time.perf_counter() - started
            emit({"type": "step", "step": step, "total_steps": total_steps, "loss": mean_loss,
                  "elapsed": elapsed, "eta": elapsed / step * (total_steps - step)})
            if step % eval_every == 0 or step == total_steps:
                validate()
            if step >= total_steps:
                break
    if not history["eval_step"] or history["eval_step"][-1] != step:
        validate()  # a stopped run still gets its last state judged
    train_seconds = time.perf_counter() - started  # the wall time of the loop, validations included
    # Training throughput counts the time spent training only: validations are not samples trained on.
    training_only = max(train_seconds - validation["seconds"], 1e-9)

    # 5. Restore the best weights, test them in every domain, save.
    unwrapped = accelerator.unwrap_model(model)
    if best["state"] is not None:
        unwrapped.load_state_dict(best["state"], strict=False)
    test_accuracy = {}
    for domain, rows in dataset.test.items():
        loader = accelerator.prepare(DataLoader(by_length(rows), batch_size=64, collate_fn=collate))
        test_accuracy[domain], _ = evaluate(model, loader, accelerator, config.bf16)
        emit({"type": "test", "domain": domain, "accuracy": test_accuracy[domain]})
    results = {
        "config": {**asdict(config), "label_names": list(config.label_names)},
        "data": dataset.description, "trainable_parameters": trainable, "total_parameters": total,
        "steps": step, "total_steps": total_steps, "stopped": stopped, "train_seconds": train_seconds,
        "validation_seconds": validation["seconds"],
        "samples": samples, "samples_per_second": samples / training_only,
        "best_step": best["step"], "best_validation_accuracy": best["accuracy"], "test_accuracy": test_accuracy,
        "history": history, "processes": accelerator.num_processes,
    }
    if config.output_dir and accelerator.is_main_process:
        save_run(unwrapped, tokenizer, config, results)
    accelerator.wait_for_everyone()
    emit({"type": "done", "results": results})
    results["model"] = unwrapped
    results["tokenizer"] = tokenizer
    return results


def save_run(model, tokenizer, config: TrainConfig, results: dict) -> Path:
    """Write the best model (LoRA: adapter only, as peft's examples do) and results.json to output_dir."""
    folder = Path(config.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    id2label = dict(enumerate(config.label_names))
    base = model.get_base_model() if config.method == "lora" else model
    base.config.id2label, base.config.label2id = id2label, {v: k for k, v in id2label.items()}
    target = folder / ("adapter" if config.method == "lora" else "model")
    model.save_pretrained(target, safe_serialization=True)  # LoRA: adapters and the classifier only
    tokenizer.save_pretrained(target)
    (folder / "results.json").write_text(json.dumps(results, indent=1))
    return target


def main(argv: list[str] | None = None) -> dict:
    config = parse_args(argv)

    def report(event: dict) -> None:
        if event["type"] == "eval":
            print(f"step {event['step']}: validation accuracy {event['accuracy']:.4f} (best {event['best']:.4f})",
                  flush=True)
        elif event["type"] == "test":
            print(f"test accuracy on {event['domain']}: {event['accuracy']:.4f}", flush=True)
        elif event["type"] == "parameters":
            print(f"trainable parameters: {event['trainable']:,} of {event['total']:,}", flush=True)

    return train(config, on_event=report)


if __name__ == "__main__":
    main()
