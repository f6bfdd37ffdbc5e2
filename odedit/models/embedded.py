"""The embedded default model: build, pretrain on the seeded `World`, ship, evaluate.

The shipped checkpoint lives in `odedit/models/embedded/` (save_pretrained output of the tiny
LLaVA-class model + processor, and `train_report.json`). It is reproduced on CPU with

    python -m odedit.models.embedded --out odedit/models/embedded --seed 0

Pretraining encodes every batch with `MLLMAdapter.encode(..., with_eos=True)`, i.e. exactly the
input format editors and evaluators use later (`<image> question: ... ? answer: <target> </s>`).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from odedit.models import tiny_llava
from odedit.models.adapter import IGNORE_INDEX, MLLMAdapter, Sample
from odedit.models.tiny_llava import TinyLlavaSpec
from odedit.models.world import World

DEFAULT_MODEL_DIR = Path(__file__).parent / "embedded"
REPORT_NAME = "train_report.json"

# The spec the shipped model was trained with.
SHIPPED_SPEC = TinyLlavaSpec(
    image_size=32, patch_size=8, vision_hidden=128, vision_layers=2, vision_heads=4,
    text_hidden=192, text_layers=4, text_heads=4, text_intermediate=512, max_positions=128,
)
DEFAULT_STEPS = 2500
DEFAULT_LR = 1.5e-3


def default_model_path() -> Path:
    """Directory of the shipped embedded model (raises if the checkpoint is missing)."""
    if not (DEFAULT_MODEL_DIR / "config.json").is_file():
        raise FileNotFoundError(
            f"embedded model not found in {DEFAULT_MODEL_DIR}; rebuild it with "
            f"`python -m odedit.models.embedded --out {DEFAULT_MODEL_DIR}`"
        )
    return DEFAULT_MODEL_DIR


# ----------------------------------------------------------------------------- batching
class _Bank:
    """Samples pre-encoded once with the adapter (right-padded to one common length) so a
    training batch is a row gather; identical tokens to encoding the batch directly."""

    def __init__(self, adapter: MLLMAdapter, samples: Sequence[Sample], chunk: int = 512):
        parts = [adapter.encode(list(samples[i:i + chunk]), with_eos=True) for i in range(0, len(samples), chunk)]
        width = max(p.labels.shape[1] for p in parts)
        pad = adapter.tokenizer.pad_token_id

        def padded(t: torch.Tensor, value: int) -> torch.Tensor:
            return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)

        self.input_ids = torch.cat([padded(p.inputs["input_ids"], pad) for p in parts])
        self.attention_mask = torch.cat([padded(p.inputs["attention_mask"], 0) for p in parts])
        self.labels = torch.cat([padded(p.labels, IGNORE_INDEX) for p in parts])
        self.pixel_values = (torch.cat([p.inputs["pixel_values"] for p in parts])
                             if "pixel_values" in parts[0].inputs else None)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batch(self, idx: torch.Tensor) -> tuple[dict, torch.Tensor]:
        mask = self.attention_mask[idx]
        length = int(mask.sum(dim=1).max())
        inputs = {"input_ids": self.input_ids[idx, :length], "attention_mask": mask[:, :length]}
        if self.pixel_values is not None:
            inputs["pixel_values"] = self.pixel_values[idx]
        return inputs, self.labels[idx, :length]


def tail_prior(tokenizer, world: World, ratio: float = 0.55, fillers: int = 10, seed: int = 0) -> torch.Tensor:
    """[V, V]: row a is the graded belief over ALTERNATIVES to answer token a: the other members
    of a's answer set in a fixed seeded order, then `fillers` fixed other words, with weights
    decaying by `ratio` per rank. Training on (1 - m) * one-hot + m * this row gives the model a
    structured, well-separated tail (like a real LM's runner-up answers), so top-10 locality
    (M-Loc) measures disturbed beliefs rather than the order of near-equal leftover logits."""
    vocab = len(tokenizer)
    prior = torch.zeros(vocab, vocab)
    rng = random.Random(seed)
    words = [w for w in world.corpus() if len(w.split()) == 1]
    ids = sorted({tokenizer.convert_tokens_to_ids(w) for w in words} - set(tokenizer.all_special_ids))
    for group in world.answer_sets():
        gids = [tokenizer.convert_tokens_to_ids(w) for w in group]
        order = gids[:]
        rng.shuffle(order)
        others = [i for i in ids if i not in gids]
        rng.shuffle(others)
        for a in gids:
            alts = [i for i in order if i != a] + others[:fillers]
            weights = torch.tensor([ratio ** k for k in range(len(alts))])
            prior[a, alts] = weights / weights.sum()
    return prior


def _soft_answer_loss(logits: torch.Tensor, labels: torch.Tensor, prior: torch.Tensor | None,
                      tail_mass: float) -> torch.Tensor:
    """Cross-entropy over the target tokens; at each sample's answer token the target is
    (1 - tail_mass) * one-hot + tail_mass * prior[answer] (hard targets when prior is None)."""
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    mask = labels != IGNORE_INDEX
    logp = torch.log_softmax(logits, dim=-1)
    target = torch.nn.functional.one_hot(labels.clamp(min=0), logits.shape[-1]).float()
    if prior is not None and tail_mass > 0:
        first = mask.float().argmax(dim=1)
        rows = torch.arange(labels.shape[0])
        answer = labels[rows, first]
        target[rows, first] = (1 - tail_mass) * target[rows, first] + tail_mass * prior[answer]
    per_tok = -(target * logp).sum(-1)
    return (per_tok * mask).sum() / mask.sum()


def _lr_lambda(warmup: int, total: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))
    return f


# ----------------------------------------------------------------------------- pretraining
def pretrain(
    out_dir: str | Path,
    seed: int = 0,
    steps: int = DEFAULT_STEPS,
    spec: TinyLlavaSpec = SHIPPED_SPEC,
    batch_size: int = 64,
    text_fraction: float = 0.2,
    lr: float = DEFAULT_LR,
    warmup: int = 100,
    threads: int | None = 2,
    progress: bool = True,
    checkpoint_every: int = 500,
    tail_mass: float = 0.2,
) -> dict:
    """Build tokenizer/processor/model, pretrain on `World(seed)`, save to `out_dir` with a
    `train_report.json`, and return that report."""
    if threads:
        torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    t0 = time.time()
    world = World(seed)
    tokenizer = tiny_llava.train_word_tokenizer(world.corpus())
    processor = tiny_llava.build_processor(tokenizer, spec)
    model = tiny_llava.build_model(tokenizer, spec, seed=seed)
    adapter = MLLMAdapter(model, processor, torch.device("cpu"), name="embedded")

    prior = tail_prior(tokenizer, world, seed=seed) if tail_mass > 0 else None
    examples = world.training_examples()
    image_bank = _Bank(adapter, [s for s in examples if s.image is not None])
    text_bank = _Bank(adapter, [s for s in examples if s.image is None])
    encode_s = time.time() - t0

    model.train()
    for p in model.parameters():
        p.requires_grad_(True)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(warmup, steps))
    gen = torch.Generator().manual_seed(seed)
    n_text = max(1, int(round(batch_size * text_fraction)))
    n_img = batch_size - n_text

    from tqdm.auto import tqdm

    losses: list[float] = []
    part_losses: list[tuple[float, float]] = []
    bar = tqdm(range(steps), desc="pretrain", disable=not progress, mininterval=2.0)
    for step in bar:
        parts = []
        opt.zero_grad(set_to_none=True)
        for bank, n in ((image_bank, n_img), (text_bank, n_text)):
            inputs, labels = bank.batch(torch.randint(len(bank), (n,), generator=gen))
            loss = _soft_answer_loss(model(**inputs).logits, labels, prior, tail_mass)
            (loss * (n / batch_size)).backward()
            parts.append(float(loss.detach()))
        total = (parts[0] * n_img + parts[1] * n_text) / batch_size
        part_losses.append((parts[0], parts[1]))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(total)
        if checkpoint_every and step and step % checkpoint_every == 0:
            tiny_llava.save(model, processor, Path(out_dir))  # weights so far (no report yet)
        if step % 25 == 0:
            recent = np.mean(part_losses[-25:], axis=0)
            bar.set_postfix(img=f"{recent[0]:.4f}", txt=f"{recent[1]:.4f}", lr=f"{sched.get_last_lr()[0]:.1e}")
    bar.close()
    train_s = time.time() - t0

    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    out_dir = Path(out_dir)
    tiny_llava.save(model, processor, out_dir)
    accuracies = evaluate_adapter(adapter, world)
    report = {
        "seed": seed,
        "steps": steps,
        "batch_size": batch_size,
        "text_fraction": text_fraction,
        "lr": lr,
        "warmup": warmup,
        "tail_mass": tail_mass,
        "schedule": "linear warm-up then linear decay; AdamW(0.9, 0.98), wd 0.01, grad clip 1.0",
        "threads": threads,
        "wall_seconds": round(time.time() - t0, 1),
        "train_seconds": round(train_s, 1),
        "encode_seconds": round(encode_s, 1),
        "parameters": n_params,
        "vocab_size": len(tokenizer),
        "training_examples": len(examples),
        "final_loss": float(np.mean(losses[-50:])),
        "loss_curve": [round(float(np.mean(losses[i:i + 100])), 5) for i in range(0, len(losses), 100)],
        "accuracies": accuracies,
        "world": world.params(),
        "spec": spec.to_dict(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "command": f"python -m odedit.models.embedded --out {out_dir} --seed {seed} --steps {steps} --lr {lr} "
                   f"--tail-mass {tail_mass} --threads {threads}",
    }
    (out_dir / REPORT_NAME).write_text(json.dumps(report, indent=2))
    return report


# ----------------------------------------------------------------------------- evaluation
@torch.no_grad()
def first_token_accuracy(adapter: MLLMAdapter, samples: Sequence[Sample], batch_size: int = 128) -> float:
    """Teacher-forced accuracy of the first target token (= greedy answer, answers are one
    token). Image and text-only samples may be mixed; they are batched separately."""
    if not samples:
        return float("nan")
    correct = 0
    groups = [[s for s in samples if s.image is not None], [s for s in samples if s.image is None]]
    for group in groups:
        for i in range(0, len(group), batch_size):
            enc = adapter.encode(group[i:i + batch_size])
            logits = adapter.logits(enc)
            labels = enc.labels
            first = (labels != IGNORE_INDEX).float().argmax(dim=1)
            rows = torch.arange(labels.shape[0], device=labels.device)
            pred = logits[rows, first - 1].argmax(dim=-1)
            correct += int((pred == labels[rows, first]).sum())
    return correct / len(samples)


def evaluate_adapter(adapter: MLLMAdapter, world: World | None = None, train_sample: int = 1500,
                     per_split: int | None = None, seed: int = 0) -> dict:
    world = world or World(0)
    rng = random.Random(seed)
    train = world.training_examples()
    splits = {"train": rng.sample(train, min(train_sample, len(train)))}
    splits.update(world.heldout_splits())
    if per_split:
        splits = {k: rng.sample(v, min(per_split, len(v))) for k, v in splits.items()}
    return {k: round(first_token_accuracy(adapter, v), 4) for k, v in splits.items()}


def evaluate(model_dir: str | Path | None = None, seed: int | None = None, per_split: int | None = None) -> dict:
    """Accuracies of a saved model on: training examples (a sample), held-out views, held-out
    phrasings, both held out, text-only facts (held-out phrasings) and the held-out style."""
    model_dir = Path(model_dir) if model_dir else default_model_path()
    if seed is None:
        report = model_dir / REPORT_NAME
        seed = json.loads(report.read_text())["seed"] if report.is_file() else 0
    adapter = MLLMAdapter.load(model_dir, device="cpu")
    return evaluate_adapter(adapter, World(seed), per_split=per_split)


# ----------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m odedit.models.embedded",
        description="Pretrain the embedded tiny LLaVA-class model on the seeded world and save it.",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_MODEL_DIR, help="output directory")
    parser.add_argument("--seed", type=int, default=0, help="world and training seed")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="optimiser steps")
    parser.add_argument("--lr", type=float, default=DEFAULT_LR, help="peak learning rate")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--tail-mass", type=float, default=0.2,
                        help="probability mass of the graded runner-up beliefs (0: hard targets)")
    parser.add_argument("--evaluate-only", action="store_true", help="only evaluate the model in --out")
    args = parser.parse_args(argv)
    if args.evaluate_only:
        print(json.dumps(evaluate(args.out), indent=2))
        return 0
    report = pretrain(args.out, seed=args.seed, steps=args.steps, lr=args.lr, threads=args.threads,
                      tail_mass=args.tail_mass)
    print(json.dumps({k: report[k] for k in ("wall_seconds", "parameters", "final_loss", "accuracies")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
