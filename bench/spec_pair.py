"""A trained target/draft pair for the speculative-decoding benchmark, cached under
`.greengate/models/spec-pair/`.

Random weights make acceptance meaningless, so this trains, on this machine, from the text in
`../shared/data/` (RouterBench prompts and the answers of its 11 models, RouterDC questions,
Quora questions):

- a byte-level BPE tokenizer (4,096 ids) shared by both models;
- the **target**, a Llama of ~21M parameters, trained on chat-formatted (prompt, answer) pairs
  with a LayerSkip-style early-exit loss at layer `EXIT_LAYER` (the final norm and LM head
  applied to that layer's output), so that self-speculation (the target's first layers plus its
  own head) has something to propose with;
- a "copy" family: repeat a given text (the workload prompt lookup exists for), built from
  RouterBench answers;
- the **draft**, a Llama of ~2.6M parameters, distilled from the target's own greedy answers to
  the training prompts (sequence-level distillation: the draft learns what the target says).

10% of the prompts of every data set (by a hash of the prompt) are held out of both trainings,
with everything derived from them (a copy request of a held-out prompt's answer); the
benchmark's prompts come from those. `python bench/spec_pair.py` trains (or reports the
cached pair); the benchmark calls `ensure_pair()`.
"""

from __future__ import annotations

import argparse
import ast
import csv
import hashlib
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backends.engine.checkpoint import Shape, build_tokenizer, write_checkpoint  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
PAIR_DIR = ROOT / ".greengate" / "models" / "spec-pair"
VOCAB = 4096
SEQ_LEN = 256
EXIT_LAYER = 2
TARGET = Shape(hidden=512, layers=6, heads=8, kv_heads=4, intermediate=1536, vocab=VOCAB,
               max_positions=2048)
DRAFT = Shape(hidden=256, layers=2, heads=4, kv_heads=2, intermediate=768, vocab=VOCAB,
              max_positions=2048)
HEADER = "<|start_header_id|>{role}<|end_header_id|>\n\n"


@dataclass(frozen=True)
class Chat:
    family: str  # the data set it came from
    prompt: str
    answer: str | None
    source: str = ""  # the data-set prompt it derives from: held out with it (default: prompt)

    @property
    def group(self) -> str:
        return self.source or self.prompt


def held_out(text: str, frac: float = 0.1) -> bool:
    return int(hashlib.sha1(text.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < frac


def load_chats(data: Path = DATA) -> list[Chat]:
    csv.field_size_limit(1 << 30)
    chats: list[Chat] = []
    copyable: list[tuple[str, str]] = []
    for path in sorted((data / "routerbench").glob("*.csv")):
        family = path.stem.removesuffix("_train")
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                prompt = _unlist(row["prompt"])
                answers = [_unlist(v) for k, v in row.items()
                           if k.endswith("|model_response") and v]
                for a in answers[:4]:  # 4 of the 11 answers keep the families balanced
                    chats.append(Chat(family, prompt, a))
                for a in answers[4:7]:
                    text = a[:300].rsplit(" ", 1)[0] if len(a) > 300 else a
                    if len(text) >= 40:
                        copyable.append((prompt, text))
    # Requests whose answer copies the input (what prompt lookup is for): repeat an answer.
    for source, text in random.Random(7).sample(copyable, min(2500, len(copyable))):
        chats.append(Chat("copy", copy_prompt(text), text, source))
    for path in sorted((data / "routerdc7").glob("*.json")):
        family = path.stem.replace("-", "_").removesuffix("_train")
        if family == "cmmlu":
            continue  # Chinese: a 4k-id BPE trained mostly on English spends it badly
        for item in json.loads(path.read_text()):
            chats.append(Chat(family, str(item["question"]), None))
    return chats


def _unlist(value: str) -> str:
    if value.startswith("['") or value.startswith('["'):
        try:
            parsed = ast.literal_eval(value)
            if isinstance(parsed, list) and parsed:
                return str(parsed[0])
        except (ValueError, SyntaxError):
            pass
    return value


def copy_prompt(text: str) -> str:
    return "Repeat this text exactly:\n\n" + text


def render(prompt: str, answer: str | None = None) -> str:
    """The checkpoint's llama chat template, as text (bos added by the caller): the prompt
    ready for the assistant's turn, or with the answer when there is one."""
    text = HEADER.format(role="user") + prompt + "<|eot_id|>" + HEADER.format(role="assistant")
    if answer is not None:
        text += answer + "<|eot_id|>"
    return text


def training_text(c: Chat) -> str:
    # A question without an answer trains as a user turn alone: an assistant header followed by
    # nothing would teach the model to end its turn before it starts.
    if c.answer is None:
        return HEADER.format(role="user") + c.prompt + "<|eot_id|>"
    return render(c.prompt, c.answer)


def heldout_prompts(n: int, seed: int = 0, *, max_chars: int = 600,
                    families: tuple[str, ...] | None = None,
                    exclude: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """(family, prompt) pairs that neither model trained on, spread over the families."""
    by_family: dict[str, list[str]] = {}
    for c in load_chats():
        if families is not None and c.family not in families or c.family in exclude:
            continue
        if held_out(c.group) and len(c.prompt) <= max_chars:
            by_family.setdefault(c.family, [])
            if c.prompt not in by_family[c.family]:
                by_family[c.family].append(c.prompt)
    rng = random.Random(seed)
    out: list[tuple[str, str]] = []
    families = sorted(by_family)
    while len(out) < n and any(by_family.values()):
        for fam in families:
            if by_family[fam] and len(out) < n:
                out.append((fam, by_family[fam].pop(rng.randrange(len(by_family[fam])))))
    return out


# --- training --------------------------------------------------------------------------------


def _hf_model(shape: Shape, tok: Any) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    from backends.engine.checkpoint import hf_config

    cfg = LlamaConfig(**hf_config("llama", shape, tok, "float32"))
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg)


def _pack(token_lists: list[list[int]], seq_len: int) -> torch.Tensor:
    flat = [t for ids in token_lists for t in ids]
    n = len(flat) // seq_len
    return torch.tensor(flat[: n * seq_len], dtype=torch.long).view(n, seq_len)


def train(model: Any, data: torch.Tensor, minutes: float, *, lr: float, batch: int,
          exit_layer: int | None, log_name: str) -> dict[str, Any]:
    """AdamW with warm-up and cosine decay over a wall-clock budget (bf16 autocast on CPU)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, betas=(0.9, 0.95))
    model.train()
    start = time.monotonic()
    budget = minutes * 60
    step = tokens = 0
    losses: list[float] = []
    gen = torch.Generator().manual_seed(0)
    while (elapsed := time.monotonic() - start) < budget:
        frac = elapsed / budget
        scale = min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * frac))
        for g in opt.param_groups:
            g["lr"] = lr * max(scale, 0.05)
        idx = torch.randint(0, data.shape[0], (batch,), generator=gen)
        x = data[idx]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(input_ids=x, labels=x, output_hidden_states=exit_layer is not None)
            loss = out.loss
            if exit_layer is not None:
                h = model.model.norm(out.hidden_states[exit_layer])
                early = model.lm_head(h)[:, :-1].float()
                loss = loss + 0.5 * torch.nn.functional.cross_entropy(
                    early.reshape(-1, early.shape[-1]), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        tokens += x.numel()
        losses.append(float(out.loss.detach()))
        if step % 50 == 0:
            print(f"[{log_name}] step {step} {elapsed / 60:.1f} min loss "
                  f"{sum(losses[-50:]) / 50:.3f} ({tokens / elapsed:.0f} tok/s)", flush=True)
    model.eval()
    return {"steps": step, "tokens": tokens, "minutes": (time.monotonic() - start) / 60,
            "final_loss": sum(losses[-50:]) / max(1, len(losses[-50:]))}


def _save(model: Any, folder: Path, shape: Shape, tok: Any, note: str) -> None:
    weights = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()
               if k != "lm_head.weight"}  # tied to the embedding
    write_checkpoint(folder, "llama", shape, tok, weights, readme=note)


def _distill_data(target_dir: Path, prompts: list[str], tok: Any, max_new: int) -> list[list[int]]:
    """The target's greedy answers to the training prompts, generated by greengate's engine."""
    from backends.engine.engine import Engine, EngineConfig
    from backends.engine.sampler import SamplingParams

    bos = tok.token_to_id("<|begin_of_text|>")
    ids = [[bos, *tok.encode(render(p), add_special_tokens=False).ids][-SEQ_LEN // 2:]
           for p in prompts]
    eng = Engine.from_checkpoint(target_dir, EngineConfig(dtype="bfloat16", max_num_seqs=64,
                                                          max_waiting=len(ids) + 1))
    try:
        outs = eng.generate_batch_sync(ids, SamplingParams(temperature=0, max_tokens=max_new))
    finally:
        eng.shutdown()
    return [p + c.token_ids for p, c in zip(ids, outs, strict=True)]


def build_pair(out: Path = PAIR_DIR, *, target_minutes: float = 12.0,
               draft_minutes: float = 4.0, distill_prompts: int = 1000,
               init_target: Path | None = None) -> dict[str, Any]:
    """Train the pair into `out`; `init_target` continues from an earlier target (its
    tokenizer is kept) instead of starting from random weights."""
    t0 = time.monotonic()
    chats = load_chats()
    train_chats = [c for c in chats if not held_out(c.group)]
    texts = [training_text(c) for c in train_chats]
    if init_target is not None:
        from tokenizers import Tokenizer as HFTokenizer

        tok = HFTokenizer.from_file(str(init_target / "tokenizer.json"))
    else:
        tok = build_tokenizer("llama", VOCAB, corpus=texts[::3])
    bos = tok.token_to_id("<|begin_of_text|>")
    encoded = [[bos, *e.ids] for e in tok.encode_batch(texts, add_special_tokens=False)]
    random.Random(0).shuffle(encoded)
    data = _pack(encoded, SEQ_LEN)
    print(f"corpus: {len(train_chats)} chats, {data.numel()} tokens in {data.shape[0]} rows",
          flush=True)

    target = _hf_model(TARGET, tok)
    if init_target is not None:
        from safetensors.torch import load_file

        state = load_file(str(init_target / "model.safetensors"))
        target.load_state_dict(state, strict=False)
        target.tie_weights()
        prior = json.loads((init_target.parent / "pair.json").read_text())["target"]
    else:
        prior = {"tokens": 0, "minutes": 0.0}
    t_stats = train(target, data, target_minutes, lr=1.5e-3, batch=16,
                    exit_layer=EXIT_LAYER, log_name="target")
    t_stats["tokens"] += prior["tokens"]
    t_stats["minutes"] += prior["minutes"]
    _save(target, out / "target", TARGET, tok,
          f"greengate spec-decode benchmark target, trained here from ../shared/data "
          f"({t_stats['tokens']} tokens, {t_stats['minutes']:.1f} min), early-exit loss at "
          f"layer {EXIT_LAYER}.\n")

    prompts = sorted({c.prompt for c in train_chats})
    random.Random(1).shuffle(prompts)
    distilled = _distill_data(out / "target", prompts[:distill_prompts], tok, max_new=128)
    d_data = _pack(distilled, SEQ_LEN)
    draft = _hf_model(DRAFT, tok)
    d_stats = train(draft, d_data, draft_minutes, lr=3e-3, batch=16, exit_layer=None,
                    log_name="draft")
    _save(draft, out / "draft", DRAFT, tok,
          f"greengate spec-decode benchmark draft, distilled from the target's greedy answers "
          f"to {len(distilled)} training prompts ({d_stats['tokens']} tokens, "
          f"{d_stats['minutes']:.1f} min).\n")
    info = {
        "target": {"params": _params(target), "shape": asdict(TARGET), **t_stats,
                   "exit_layer": EXIT_LAYER},
        "draft": {"params": _params(draft), "shape": asdict(DRAFT), **d_stats,
                  "distill_tokens": int(d_data.numel())},
        "corpus_tokens": int(data.numel()),
        "total_minutes": (time.monotonic() - t0) / 60,
    }
    (out / "pair.json").write_text(json.dumps(info, indent=2))
    return info


def _params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def ensure_pair(out: Path = PAIR_DIR, **kwargs: Any) -> dict[str, Any]:
    """The cached pair's figures, training it first when there is none."""
    info = out / "pair.json"
    if info.exists():
        return json.loads(info.read_text())
    return build_pair(out, **kwargs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=PAIR_DIR)
    ap.add_argument("--target-minutes", type=float, default=12.0)
    ap.add_argument("--draft-minutes", type=float, default=4.0)
    ap.add_argument("--retrain", action="store_true")
    ap.add_argument("--init-target", type=Path, help="continue from this target folder")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads: on a shared machine, more than 1 spins against the "
                    "other processes' load and runs several times slower")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.retrain and (args.out / "pair.json").exists():
        (args.out / "pair.json").unlink()
    print(json.dumps(ensure_pair(args.out, target_minutes=args.target_minutes,
                                 draft_minutes=args.draft_minutes,
                                 init_target=args.init_target), indent=2))


if __name__ == "__main__":
    main()
