"""Precision / recall of routing.safety.pii on labelled PII spans, plus detection latency.

Data: ../shared/data/pii/presidio_synth_dataset_v2.json (Presidio research synthetic set,
1,500 records ``{full_text, spans: [{entity_type, entity_value, start_position,
end_position}]}``); ``--data`` takes any file in that format.

Matching rules, per entity type (a prediction only ever matches gold of its own type):

* overlap (primary): a predicted span is a true positive when it overlaps (shares at least
  one character with) a gold span of the same type; a gold span is found when some
  prediction of the same type overlaps it. precision = matched predictions / predictions,
  recall = found gold spans / gold spans. Lenient on purpose: for redaction, covering a value
  matters, not agreeing on whether ", CO" belongs to an address.
* exact: the same, but the prediction must have exactly the gold span's boundaries.

Gold types we do not detect (GPE, ORGANIZATION, DATE_TIME, ...) are listed as "not detected
by design" with their support. Predictions of a kind that has no gold spans in the file
(API_KEY here) are all counted as false positives.

PERSON comes from the shipped name tagger (``routing.safety.person_names``; ``--names none`` for
the old cue heuristic); the run reports both side by side (``person_anchor_heuristic``).
``--split heldout`` (default) keeps only the Presidio records whose template the tagger never
trained on (``train.person_names``: 30% of ``template_id``s) and adds faker sentences from
held-out templates (``--faker``, PERSON spans only); ``--split all`` uses every record.

``--benign`` also runs detection over the ordinary user prompts of ../shared/data
(RouterBench, RouterDC: math, code, exam questions), which contain no PII: every hit there
is a false positive, the most realistic precision check for the number-shaped kinds.
``--wild N`` lists N detections per kind on the in-the-wild jailbreak prompts (real user text,
unlabelled: judge by eye; this is how PERSON was found to fire mostly on AI personas).

    python bench/pii_eval.py --out bench/results/pii_eval.json --benign --wild 20
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from routing.safety import pii  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
DEFAULT_DATA = SHARED / "pii" / "presidio_synth_dataset_v2.json"
# Gold label -> our kind. Identity for everything we detect; the rest is out of scope.
GOLD_TO_KIND = {k: k for k in pii.ALL_KINDS}


def load(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        records = json.load(f)
    if not isinstance(records, list):
        raise SystemExit(f"{path}: expected a JSON list of records")
    return records


def overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    if not s:
        return 0.0
    i = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[i]


def prf(tp_pred: int, n_pred: int, found: int, n_gold: int) -> dict[str, float | None]:
    p = tp_pred / n_pred if n_pred else None
    r = found / n_gold if n_gold else None
    f1 = 2 * p * r / (p + r) if p is not None and r is not None and p + r > 0 else None
    return {"precision": p, "recall": r, "f1": f1}


def evaluate(
    records: list[dict], kinds: frozenset[str], examples: int, names: object = None
) -> tuple[dict, dict[str, list[str]]]:
    c: dict[str, Counter[str]] = defaultdict(Counter)
    confusion: dict[str, Counter[str]] = defaultdict(Counter)
    errors: dict[str, list[str]] = defaultdict(list)
    not_detected: Counter[str] = Counter()

    for rec in records:
        text = rec["full_text"]
        pred = pii.detect(text, kinds, names)

        gold_by_kind: dict[str, list[tuple[int, int]]] = defaultdict(list)
        all_gold: list[tuple[str, tuple[int, int]]] = []
        for sp in rec["spans"]:
            g = (sp["start_position"], sp["end_position"])
            all_gold.append((sp["entity_type"], g))
            kind = GOLD_TO_KIND.get(sp["entity_type"])
            if kind is None:
                not_detected[sp["entity_type"]] += 1
            else:
                gold_by_kind[kind].append(g)

        for kind in kinds:
            gold = gold_by_kind.get(kind, [])
            preds = [(s.start, s.end) for s in pred if s.kind == kind]
            c[kind]["support"] += len(gold)
            c[kind]["predicted"] += len(preds)
            for p in preds:
                if any(overlaps(p, g) for g in gold):
                    c[kind]["tp_overlap"] += 1
                else:
                    others = [t for t, g in all_gold if overlaps(p, g)]
                    confusion[kind][others[0] if others else "(no gold span)"] += 1
                    if len(errors[f"{kind} FP"]) < examples:
                        errors[f"{kind} FP"].append(
                            f"{text[p[0] : p[1]]!r} in {text[max(0, p[0] - 40) : p[1] + 20]!r}"
                        )
                if p in gold:
                    c[kind]["tp_exact"] += 1
            for g in gold:
                if any(overlaps(p, g) for p in preds):
                    c[kind]["found_overlap"] += 1
                elif len(errors[f"{kind} FN"]) < examples:
                    errors[f"{kind} FN"].append(
                        f"{text[g[0] : g[1]]!r} in {text[max(0, g[0] - 40) : g[1] + 20]!r}"
                    )
                if g in preds:
                    c[kind]["found_exact"] += 1

    per_kind = {}
    for kind in sorted(kinds):
        k = c[kind]
        per_kind[kind] = {
            "support": k["support"],
            "predicted": k["predicted"],
            "overlap": prf(k["tp_overlap"], k["predicted"], k["found_overlap"], k["support"]),
            "exact": prf(k["tp_exact"], k["predicted"], k["found_exact"], k["support"]),
            "false_positives_by_gold_type": dict(confusion[kind].most_common()),
            "default_on": kind in pii.DEFAULT_KINDS,
        }
    totals = Counter()
    micro_kinds = (pii.DEFAULT_KINDS | {pii.PERSON}) & kinds
    for kind in micro_kinds:
        for key in ("support", "predicted", "tp_overlap", "found_overlap"):
            totals[key] += c[kind][key]
    result = {
        "per_kind": per_kind,
        "micro_default_kinds_overlap": prf(
            totals["tp_overlap"], totals["predicted"], totals["found_overlap"], totals["support"]
        ),
        "micro_kinds": sorted(micro_kinds),
        "not_detected_by_design": dict(not_detected.most_common()),
    }
    return result, dict(errors)


def latency_summary(lat_us: list[float]) -> dict[str, float]:
    return {
        "p50_us": round(percentile(lat_us, 50), 1),
        "p99_us": round(percentile(lat_us, 99), 1),
        "mean_us": round(statistics.fmean(lat_us), 1) if lat_us else 0.0,
        "max_us": round(max(lat_us), 1) if lat_us else 0.0,
    }


def chunk_2kb(texts: list[str]) -> list[str]:
    """~2 KB prompts made of consecutive texts (records keep a realistic PII density)."""
    prompts: list[str] = []
    buf: list[str] = []
    size = 0
    for t in texts:
        buf.append(t)
        size += len(t) + 1
        if size >= 2048:
            prompts.append("\n".join(buf)[:2048])
            buf, size = [], 0
    return prompts


def long_records(records: list[dict], chars: int = 2048) -> list[dict]:
    """Consecutive records joined (one per line) into documents of about `chars` characters,
    spans shifted: long texts are tagged in windows, and a name near a window's edge must
    still be found."""
    out: list[dict] = []
    text, spans = "", []
    for rec in records:
        off = len(text) + (1 if text else 0)
        text = f"{text}\n{rec['full_text']}" if text else rec["full_text"]
        spans += [
            {
                **sp,
                "start_position": sp["start_position"] + off,
                "end_position": sp["end_position"] + off,
            }
            for sp in rec.get("spans", [])
        ]
        if len(text) >= chars:
            out.append({"full_text": text, "spans": spans})
            text, spans = "", []
    return out


def time_detect(
    prompts: list[str], kinds: frozenset[str], reps: int, names: object = None
) -> dict[str, object]:
    """Wall time and this thread's CPU time per detect() call. On a shared machine the wall
    p99 mostly measures the scheduler; CPU time is what detection itself costs."""
    wall: list[float] = []
    cpu: list[float] = []
    for _ in range(reps):
        for p in prompts:
            c0 = time.thread_time_ns()
            t0 = time.perf_counter_ns()
            pii.detect(p, kinds, names)
            wall.append((time.perf_counter_ns() - t0) / 1000)
            cpu.append((time.thread_time_ns() - c0) / 1000)
    return {"calls": len(wall), "wall": latency_summary(wall), "cpu": latency_summary(cpu)}


def benign_prompts(limit: int) -> list[str]:
    out: list[str] = []
    csv.field_size_limit(1 << 30)
    for f in sorted((SHARED / "routerbench").glob("*.csv")):
        with f.open(encoding="utf-8", newline="") as fh:
            out.extend(row["prompt"] for row in csv.DictReader(fh) if row.get("prompt"))
    for f in sorted((SHARED / "routerdc7").glob("*.json")):
        with f.open(encoding="utf-8") as fh:
            out.extend(r["question"] for r in json.load(fh) if r.get("question"))
    return out[:limit] if limit else out


def wild_prompts(limit: int) -> list[str]:
    path = SHARED / "safety" / "jailbreak_prompts_in_the_wild_2023_12_25.csv"
    if not path.exists():
        return []
    csv.field_size_limit(1 << 30)
    with path.open(encoding="utf-8", newline="") as fh:
        out = [row["prompt"] for row in csv.DictReader(fh) if row.get("prompt")]
    return out[:limit] if limit else out


def benign_report(
    prompts: list[str], kinds: frozenset[str], examples: int, names: object = None
) -> dict:
    hits: Counter[str] = Counter()
    prompts_hit = 0
    samples: dict[str, list[str]] = defaultdict(list)
    for text in prompts:
        spans = pii.detect(text, kinds, names)
        if spans:
            prompts_hit += 1
        for s in spans:
            hits[s.kind] += 1
            if len(samples[s.kind]) < examples:
                samples[s.kind].append(
                    f"{s.text[:60]!r} in {text[max(0, s.start - 40) : s.end + 20][:140]!r}"
                )
    return {
        "prompts": len(prompts),
        "chars": sum(map(len, prompts)),
        "prompts_with_a_detection": prompts_hit,
        "detections_by_kind": dict(hits.most_common()),
        "examples": dict(samples),
    }


def fmt(x: float | None) -> str:
    return "  -  " if x is None else f"{x:5.3f}"


def print_table(result: dict) -> None:
    print(
        f"{'kind':<15}{'on':>3}{'support':>8}{'pred':>6}"
        f"{'P':>7}{'R':>7}{'F1':>7}  |{'P ex':>7}{'R ex':>7}{'F1 ex':>7}"
    )
    for kind, r in result["per_kind"].items():
        o, e = r["overlap"], r["exact"]
        print(
            f"{kind:<15}{'y' if r['default_on'] else 'n':>3}{r['support']:>8}{r['predicted']:>6}"
            f"{fmt(o['precision']):>7}{fmt(o['recall']):>7}{fmt(o['f1']):>7}  |"
            f"{fmt(e['precision']):>7}{fmt(e['recall']):>7}{fmt(e['f1']):>7}"
        )
    m = result["micro_default_kinds_overlap"]
    print(
        f"micro (default kinds, overlap): P={fmt(m['precision'])} R={fmt(m['recall'])} "
        f"F1={fmt(m['f1'])}"
    )
    nd = ", ".join(f"{k} {v}" for k, v in result["not_detected_by_design"].items())
    print(f"not detected by design (support): {nd}")
    for kind, r in result["per_kind"].items():
        if r["false_positives_by_gold_type"]:
            print(f"  {kind} false positives overlap gold: {r['false_positives_by_gold_type']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path)
    ap.add_argument(
        "--kinds",
        default="all",
        help="'all' (default kinds + PERSON, STREET_ADDRESS), 'default', or a comma list",
    )
    ap.add_argument("--examples", type=int, default=0, help="print N FP/FN examples per kind")
    ap.add_argument("--benign", action="store_true", help="false positives on benign prompts")
    ap.add_argument("--benign-limit", type=int, default=0)
    ap.add_argument(
        "--wild",
        type=int,
        default=0,
        metavar="N",
        help="detections (unlabelled, N examples per kind) on in-the-wild jailbreak prompts",
    )
    ap.add_argument("--reps", type=int, default=5, help="repetitions of the 2 KB latency run")
    ap.add_argument("--no-latency", action="store_true", help="quality only")
    ap.add_argument("--names", choices=("shipped", "none"), default="shipped")
    ap.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "int8", "bf16", "fp32", "reference"),
        help="the tagger's serving precision (routing/safety/serving.py)",
    )
    ap.add_argument(
        "--layout",
        choices=("even", "stride"),
        default="even",
        help="the tagger's windows (routing/safety/person_names.py)",
    )
    ap.add_argument("--split", choices=("heldout", "all"), default="heldout")
    ap.add_argument(
        "--long",
        action="store_true",
        help="also score the records joined into ~2 KB documents (window edges)",
    )
    ap.add_argument("--faker", type=int, default=600, help="held-out faker sentences added")
    args = ap.parse_args(argv)
    names = None
    if args.names == "shipped":
        import torch

        from routing.safety.person_names import PersonTagger

        torch.set_num_threads(1)  # latency on one core, like bench/safety_eval.py

        names = PersonTagger.load(precision=args.precision, layout=args.layout)

    if not args.data.exists():
        print(f"no data at {args.data}", file=sys.stderr)
        return 2
    if args.kinds == "all":
        kinds = pii.ALL_KINDS
    elif args.kinds == "default":
        kinds = pii.DEFAULT_KINDS
    else:
        kinds = frozenset(k.strip() for k in args.kinds.split(",") if k.strip())
    records = load(args.data)
    if args.split == "heldout":
        from train.person_names import TEST_TEMPLATE_FRACTION, _hash01, faker_samples

        records = [
            r
            for r in records
            if _hash01(0, "tpl", f"presidio:{r.get('template_id')}") < TEST_TEMPLATE_FRACTION
        ]
        # faker sentences: names, and their street addresses and companies as gold too
        # (unlabelled, a found address counted as a false positive)
        gold_kind = {"ADDR": "STREET_ADDRESS", "ORG": "ORGANIZATION"}
        records += [
            {
                "full_text": fs.text,
                "spans": [
                    {
                        "entity_type": kind,
                        "start_position": a,
                        "end_position": b,
                        "entity_value": fs.text[a:b],
                    }
                    for kind, a, b in [("PERSON", a, b) for a, b in fs.names]
                    + [(gold_kind[k], a, b) for k, a, b in fs.others]
                ],
            }
            for fs in faker_samples(args.faker, 1, 0)
        ]

    for rec in records[:50]:  # warm-up: first-call costs are not steady-state latency
        pii.detect(rec["full_text"], kinds, names)
    result, errors = evaluate(records, kinds, args.examples, names)
    anchor, _ = evaluate(records, kinds, 0, None)
    result["person_anchor_heuristic"] = anchor["per_kind"].get(pii.PERSON)
    if args.long:
        docs = long_records(records)
        long_result, _ = evaluate(docs, kinds, 0, names)
        result["long_documents"] = {"documents": len(docs), **long_result}
    result["micro_anchor_heuristic"] = anchor["micro_default_kinds_overlap"]
    texts = [r["full_text"] for r in records]
    latency: dict[str, object] = {}
    for name, k in (("evaluated_kinds", kinds), ("default_kinds", pii.DEFAULT_KINDS)):
        if args.no_latency:
            break
        latency[f"per_record/{name}"] = time_detect(texts, k, args.reps, names)
        latency[f"2kb_pii_dense/{name}"] = time_detect(chunk_2kb(texts), k, args.reps, names)
    if not args.no_latency:
        latency["per_record/structured_only_anchor"] = time_detect(
            texts, pii.DEFAULT_KINDS, args.reps, None
        )
    benign = benign_prompts(args.benign_limit) if args.benign else []
    if benign and not args.no_latency:
        prompts = chunk_2kb(benign)[:500]
        latency["2kb_benign/default_kinds"] = time_detect(
            prompts, pii.DEFAULT_KINDS, args.reps, names
        )

    report = {
        "data": str(args.data),
        "records": len(records),
        "split": args.split,
        "names": args.names,
        "precision": names.encoder.precision if names is not None else None,
        "layout": names.layout if names is not None else None,
        "mean_record_chars": round(statistics.fmean(len(r["full_text"]) for r in records), 1),
        "kinds": sorted(kinds),
        "matching": {
            "overlap": "same type and at least one shared character; precision counts "
            "predictions that overlap some gold span, recall counts gold spans overlapped "
            "by some prediction",
            "exact": "same type and identical [start, end)",
        },
        **result,
        "latency": latency,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "machine": platform.processor() or platform.machine(),
    }
    if benign:
        report["benign"] = benign_report(benign, kinds, 5, names)
    wild = wild_prompts(0) if args.wild else []
    if wild:
        report["wild_unlabelled"] = benign_report(wild, kinds, args.wild, names)

    print(f"{args.data.name}: {len(records)} records, kinds={','.join(sorted(kinds))}")
    print_table(result)
    if "long_documents" in result:
        print(f"records joined into {result['long_documents']['documents']} ~2 KB documents:")
        print_table(result["long_documents"])
    print("detect() latency, us (p50 / p99), wall and thread CPU time:")
    for name, d in latency.items():
        w, c = d["wall"], d["cpu"]
        print(
            f"  {name:<30} n={d['calls']:<6} wall {w['p50_us']:>7} / {w['p99_us']:<8} "
            f"cpu {c['p50_us']:>7} / {c['p99_us']}"
        )
    if report["load_average"]:
        print(f"  (load average {report['load_average'][0]:.1f} on {report['cpus']} CPUs)")
    if benign:
        b = report["benign"]
        print(
            f"benign prompts: {b['prompts']} ({b['chars']} chars), "
            f"{b['prompts_with_a_detection']} with a detection: {b['detections_by_kind']}"
        )
        if args.examples:
            for kind, ex in b["examples"].items():
                for e in ex:
                    print(f"  benign {kind}: {e}")
    if wild:
        w = report["wild_unlabelled"]
        print(
            f"in-the-wild prompts (unlabelled, judge by eye): {w['prompts']}, "
            f"detections {w['detections_by_kind']}"
        )
        for kind, ex in w["examples"].items():
            for e in ex:
                print(f"  wild {kind}: {e}")
    if args.examples:
        for key, ex in sorted(errors.items()):
            for e in ex:
                print(f"  {key}: {e}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
