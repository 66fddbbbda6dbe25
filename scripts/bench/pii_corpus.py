"""Labelled corpora for the PII benchmarks, generated offline.

English: presidio-evaluator's sentence faker (its templates and name lists ship in the
wheel). Chinese: templates filled with Faker's ``zh_CN`` locale. Set-up, once:

    .venv/bin/pip install --no-deps presidio-evaluator==0.3.2 pandas python-dotenv presidio-anonymizer==2.2.366
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from faker import Faker

from app.pii.checksums import uscc_check_char


@dataclass
class Sample:
    text: str
    spans: list[tuple[str, int, int]]
    """(entity type, start, end)"""


EN_TYPES = {
    "PERSON": "PERSON",
    "EMAIL_ADDRESS": "EMAIL_ADDRESS",
    "PHONE_NUMBER": "PHONE_NUMBER",
    "CREDIT_CARD": "CREDIT_CARD",
    "IBAN_CODE": "IBAN_CODE",
    "IP_ADDRESS": "IP_ADDRESS",
    "US_SSN": "US_SSN",
    "STREET_ADDRESS": "STREET_ADDRESS",
    "GPE": "LOCATION",
    "LOCATION": "LOCATION",
}


def english(n: int, seed: int = 42) -> list[Sample]:
    import logging

    logging.getLogger("presidio-evaluator").setLevel(logging.ERROR)
    from presidio_evaluator.data_generator import PresidioSentenceFaker

    faker = PresidioSentenceFaker(locale="en_US", lower_case_ratio=0.05, random_seed=seed)
    out = []
    for s in faker.generate_new_fake_sentences(n):
        spans = [
            (EN_TYPES[sp.entity_type], sp.start_position, sp.end_position)
            for sp in s.spans
            if sp.entity_type in EN_TYPES
        ]
        out.append(Sample(s.full_text, spans))
    return out


ZH_TEMPLATES = [
    "你好，我叫{PERSON}，手机号是{CN_MOBILE}，麻烦尽快联系我。",
    "收货人：{PERSON}，电话{CN_MOBILE}，地址：{STREET_ADDRESS}",
    "我的身份证号码是{CN_RESIDENT_ID}，请帮我核实一下订单。",
    "退款请打到我的银行卡，卡号{CN_BANK_CARD}，谢谢！",
    "邮箱{EMAIL_ADDRESS}，有问题发邮件给我",
    "加我微信 {WECHAT_ID} 或者QQ {QQ_NUMBER} 聊",
    "护照号码{CN_PASSPORT}，下周出差要用",
    "公司统一社会信用代码：{CN_USCC}，开发票用",
    "我的电话是+86 {CN_MOBILE}，晚上打",
    "联系人：{PERSON}，手机{CN_MOBILE}，邮箱：{EMAIL_ADDRESS}",
    "快递送到{STREET_ADDRESS}就行，我姓{SURNAME}",
    "这个鞋子太好看了，下次还买",
    "物流太慢了，三天都没到",
    "请问有没有大一号的尺码？",
]


def _uscc(rng: random.Random) -> str:
    chars = "0123456789ABCDEFGHJKLMNPQRTUWXY"
    body = "91" + "".join(rng.choice("0123456789") for _ in range(6)) + "".join(rng.choice(chars) for _ in range(9))
    return body + uscc_check_char(body)


def _luhn(prefix: str, rng: random.Random, length: int) -> str:
    digits = prefix + "".join(rng.choice("0123456789") for _ in range(length - len(prefix) - 1))
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 0:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return digits + str((10 - total % 10) % 10)


def chinese(n: int, seed: int = 7) -> list[Sample]:
    fake = Faker("zh_CN")
    fake.seed_instance(seed)
    rng = random.Random(seed)
    values = {
        "PERSON": lambda: fake.name(),
        "CN_MOBILE": lambda: fake.phone_number(),
        "STREET_ADDRESS": lambda: fake.address().split(" ")[0],
        "CN_RESIDENT_ID": lambda: fake.ssn(),
        "CN_BANK_CARD": lambda: _luhn("62", rng, rng.choice([16, 19])),
        "EMAIL_ADDRESS": lambda: fake.email(),
        "WECHAT_ID": lambda: rng.choice("abcdefghijk") + fake.user_name()[:10] + str(rng.randrange(10, 99)),
        "QQ_NUMBER": lambda: str(rng.randrange(10_000, 9_999_999_999)),
        "CN_PASSPORT": lambda: rng.choice("EG") + str(rng.randrange(10_000_000, 99_999_999)),
        "CN_USCC": lambda: _uscc(rng),
    }
    out = []
    for _ in range(n):
        template = rng.choice(ZH_TEMPLATES)
        text, spans, pos = "", [], 0
        for part in template.replace("}", "{").split("{"):
            if part in values:
                value = values[part]()
                spans.append((part, len(text), len(text) + len(value)))
                text += value
            elif part == "SURNAME":
                text += fake.last_name()
            else:
                text += part
        del pos
        out.append(Sample(text, spans))
    return out
