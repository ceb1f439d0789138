"""Person names in PII: the shipped MiniLM token classifier (routing.safety.person_names)
merged with the structured detectors of routing.safety.pii, redaction and streamed restoration
with names, bad input. Offline; the tagger is loaded once per module."""

from __future__ import annotations

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest

from routing.safety import pii
from routing.safety.person_names import ARTIFACTS, NAME, NameSpan, PersonTagger

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"


@pytest.fixture(scope="module")
def tagger() -> PersonTagger:
    return PersonTagger.load()


def names(tagger: PersonTagger, text: str) -> list[str]:
    return [text[s.start : s.end] for s in tagger.spans(text)]


def test_artifact_is_small_and_loads(tagger: PersonTagger) -> None:
    assert (ARTIFACTS / f"{NAME}.safetensors").stat().st_size < 5 * 2**20
    held = tagger.model.meta["heldout"]["all"]
    assert held["gold"] > 0 and held["recall"] is not None


def test_missing_artifact_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="train.person_names"):
        PersonTagger.load(tmp_path)


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("My colleague Priya Raman will join the call.", ["Priya Raman"]),
        ("Best regards,\nTomasz Wójcik", ["Tomasz Wójcik"]),
        ("i had lunch with maria gonzalez yesterday", ["maria gonzalez"]),
        ("PLEASE FORWARD THIS TO JOHN MILLER", ["JOHN MILLER"]),
    ],
)
def test_names_in_any_case_and_place(tagger: PersonTagger, text: str, want: list[str]) -> None:
    assert names(tagger, text) == want


def test_ordinary_prompts_have_no_names(tagger: PersonTagger) -> None:
    texts = [
        "What is the capital of France?",
        "Write a Python function that sorts a list of tuples by the second item.",
        "Ask ChatGPT to rewrite the paragraph in a formal tone.",
        "How many clips did she sell altogether in April and May?",
    ]
    assert [names(tagger, t) for t in texts] == [[], [], [], []]


def test_spans_are_whole_words(tagger: PersonTagger) -> None:
    text = "Thanks, Oluwaseun Adeyemi-Okafor"
    for s in tagger.spans(text):
        assert s.start == 0 or not text[s.start - 1].isalnum()
        assert s.end == len(text) or not text[s.end].isalnum()


def test_merged_with_structured_kinds(tagger: PersonTagger) -> None:
    text = "Contact Anna Schmidt at anna.schmidt@example.com or +49 30 1234567."
    got = {(s.kind, s.text) for s in pii.detect(text, names=tagger)}
    # overlap, as bench/pii_eval.py counts it (exact boundaries are reported there too)
    assert any(k == pii.PERSON and "Anna" in t for k, t in got)
    assert (pii.EMAIL_ADDRESS, "anna.schmidt@example.com") in got  # the email wins its overlap
    assert not any(s.kind == pii.PERSON and "@" in s.text for s in pii.detect(text, names=tagger))
    # without a finder the default kinds stay structured only
    assert pii.PERSON not in {s.kind for s in pii.detect(text)}
    # a team that asks for emails only gets emails only
    assert {s.kind for s in pii.detect(text, [pii.EMAIL_ADDRESS], tagger)} == {pii.EMAIL_ADDRESS}


def test_redaction_and_stream_restoration_are_exact(tagger: PersonTagger) -> None:
    msgs = [{"role": "user", "content": "Write a thank-you note to Camille Dubois and "
             "Kenji Watanabe; cc camille@example.org."}]  # fmt: skip
    red = pii.Redactor()
    out, counts = pii.redact_messages(msgs, red, None, tagger)
    assert counts.get(pii.PERSON) == 2 and counts.get(pii.EMAIL_ADDRESS) == 1
    text = out[0]["content"]
    assert "Camille" not in text and "Kenji" not in text and "<PERSON_1>" in text
    answer = f"Dear {text.split('to ')[1].split(' and')[0]}, thank you."
    assert red.restore(answer) == "Dear Camille Dubois, thank you."
    sr = red.stream_restorer()
    pieces = [answer[i : i + 3] for i in range(0, len(answer), 3)]
    assert "".join(sr.feed(p) for p in pieces) + sr.flush() == red.restore(answer)


@pytest.mark.parametrize(
    "text",
    ["", " ", "😀" * 500, "x" * 200_000, b"\xff\xfeab".decode("utf-8", "surrogateescape")],
)
def test_bad_input(tagger: PersonTagger, text: str) -> None:
    spans = tagger.spans(text)
    assert all(isinstance(s, NameSpan) and 0 <= s.start < s.end <= len(text) for s in spans)
    pii.detect(text, names=tagger)


@pytest.mark.skipif(not (SHARED / "pii").exists(), reason="needs ../shared/data")
def test_split_shares_no_template() -> None:
    from train.person_names import build

    d = build(SHARED, n_faker=200)
    fam_tr = {s.family for s in d["train"] if s.source in ("presidio", "faker")}
    fam_te = {s.family for s in d["test"]}
    assert fam_tr and fam_te and not fam_tr & fam_te


@pytest.mark.parametrize(
    "text",
    [
        "Please update my address to 233 Erzsébet tér 19, Domoszló, Hungary.",
        "They moved to 10252 Μεγάλη Άμμος 184, ΠΑΦΟΣ last year.",
    ],
)
def test_addresses_the_patterns_miss_are_found(tagger: PersonTagger, text: str) -> None:
    # the structured patterns alone (US and continental shapes) find none of these
    assert pii.STREET_ADDRESS not in {s.kind for s in pii.detect(text)}
    got = [s for s in pii.detect(text, names=tagger) if s.kind == pii.STREET_ADDRESS]
    assert got and any(any(c.isdigit() for c in s.text) for s in got)
    ent = tagger.entities(text)
    assert ent.addresses and not ent.names


def test_companies_made_of_surnames_are_not_names(tagger: PersonTagger) -> None:
    text = "Our lawyers at Hawkins, Richardson and Santana LLC reviewed the contract."
    assert names(tagger, text) == []


def test_address_redaction_and_stream_restoration_are_exact(tagger: PersonTagger) -> None:
    msgs = [{"role": "user", "content": "Please call Erik Lund at 233 Erzsébet tér 19, Domoszló."}]
    red = pii.Redactor()
    out, counts = pii.redact_messages(msgs, red, None, tagger)
    assert counts.get(pii.STREET_ADDRESS) and counts.get(pii.PERSON) == 1
    assert "Erzsébet" not in out[0]["content"] and "Erik" not in out[0]["content"]
    answer = f"Calling {out[0]['content'].split('call ', 1)[1]}"
    sr = red.stream_restorer()
    pieces = [answer[i : i + 2] for i in range(0, len(answer), 2)]
    restored = "".join(sr.feed(p) for p in pieces) + sr.flush()
    assert restored == red.restore(answer) == "Calling " + msgs[0]["content"].split("call ", 1)[1]


def test_a_names_only_artifact_still_loads(tmp_path: Path, tagger: PersonTagger) -> None:
    """An O/B-PER/I-PER artifact (3 outputs) finds names and no addresses."""
    import json

    from safetensors.torch import load_file, save_file

    w = load_file(str(ARTIFACTS / f"{NAME}.safetensors"))
    w["head.weight"], w["head.bias"] = w["head.weight"][:3].clone(), w["head.bias"][:3].clone()
    save_file(w, str(tmp_path / f"{NAME}.safetensors"))
    meta = json.loads((ARTIFACTS / f"{NAME}.json").read_text())
    meta["lora"]["n_out"] = 3
    (tmp_path / f"{NAME}.json").write_text(json.dumps(meta))
    old = PersonTagger.load(tmp_path)
    text = "My colleague Priya Raman lives at Mellemvej 32, Odense."
    ent = old.entities(text)
    assert ent.addresses == []
    assert any(text[n.start : n.end].startswith("Priya Raman") for n in ent.names)


def test_even_windows_with_overlap_cover_share_and_have_one_length() -> None:
    from routing.safety.jailbreak import even_windows

    for n in (127, 200, 512, 1000, 3000):
        wins = even_windows(n, 126, 32, 16)
        assert wins is not None and wins[0][0] == 0 and wins[-1][1] == n
        assert len({e - s for s, e in wins}) == 1 and wins[0][1] - wins[0][0] <= 126
        assert all(a[1] - b[0] >= 16 for a, b in zip(wins, wins[1:], strict=False))
        assert len(wins) == -(-(n - 16) // 110)  # the fewest that share 16 tokens
    assert even_windows(100, 126, 32, 16) == [(0, 100)]
    assert even_windows(126 * 40, 126, 32, 16) is None  # then the capped, spaced windows


def test_tagger_windows_cost_less_than_the_stride_layout(tagger: PersonTagger) -> None:
    assert tagger.layout == "even"
    old = tagger.with_precision("reference")
    assert old.layout == "even"  # the same windows: with_precision changes precision only
    stride = PersonTagger(tagger.model, tagger.threshold, layout="stride", precision="fp32")
    assert sum(e - s for s, e in tagger.windows(512)) < 0.8 * sum(
        e - s for s, e in stride.windows(512)
    )
    assert tagger.windows(0) == [] and tagger.windows(5) == [(0, 5)]
    huge = tagger.windows(100_000)
    assert len(huge) == 32 and huge[0][0] == 0 and huge[-1][1] == 100_000
