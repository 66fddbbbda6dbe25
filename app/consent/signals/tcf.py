"""Strict decoding of IAB TCF v2.2 TC strings.

Field values come from ``iab-tcf`` (0.2.2), but that library fails open: its bit
reader answers ``True`` for every bit past the end of the input, so a valid
string cut to 26 characters decodes with all 24 purposes consented.  Before
the library sees a string, :func:`decode_tcf` therefore walks every segment
with a strict reader that refuses to read past the last bit present, checks
each declared length (vendor bit fields, range entries, publisher
restrictions, non-core segments) against the bits actually there, and checks
that what follows the last field is only the zero padding an encoder adds.
A string cut short is rejected, never padded.

After the walk, the library decodes the same bytes and its purposes, legitimate
interests and special features must agree with the walk; any disagreement or
exception from the library is a rejection too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from iab_tcf.iab_tcf_v2 import ConsentV2
from iab_tcf.v2.non_core_segments import NonCoreSegment

from app.consent.signals._bits import BitReader, SignalError, Truncated

# Bit widths of the TCF v2 core segment, in order (TCF v2.2 "Core String").
CORE_FIXED_FIELDS: tuple[tuple[str, int], ...] = (
    ("Version", 6),
    ("Created", 36),
    ("LastUpdated", 36),
    ("CmpId", 12),
    ("CmpVersion", 12),
    ("ConsentScreen", 6),
    ("ConsentLanguage", 12),
    ("VendorListVersion", 12),
    ("TcfPolicyVersion", 6),
    ("IsServiceSpecific", 1),
    ("UseNonStandardTexts", 1),
    ("SpecialFeatureOptIns", 12),
    ("PurposesConsent", 24),
    ("PurposesLITransparency", 24),
    ("PurposeOneTreatment", 1),
    ("PublisherCC", 12),
)
VENDOR_SECTION_HEADER_BITS = 16 + 1  # MaxVendorId, IsRangeEncoding
#: 230: every fixed field plus the vendor-consent section header.  No TCF v2 core
#: segment can be shorter; a longer one must also hold what its headers declare.
MIN_CORE_BITS = sum(width for _, width in CORE_FIXED_FIELDS) + VENDOR_SECTION_HEADER_BITS
#: @iabtcf/core pads to a multiple of 24 bits (the LCM of 6 and 8); anything more is not padding.
MAX_PADDING_BITS = 24
MIN_POLICY_VERSION = 4  # TcfPolicyVersion 4 is TCF v2.2

SEGMENT_DISCLOSED_VENDORS = 1
SEGMENT_ALLOWED_VENDORS = 2
SEGMENT_PUBLISHER_TC = 3
_SEGMENT_NAMES = {
    SEGMENT_DISCLOSED_VENDORS: "disclosed vendors segment",
    SEGMENT_ALLOWED_VENDORS: "allowed vendors segment",
    SEGMENT_PUBLISHER_TC: "publisher TC segment",
}
MAX_INPUT_CHARS = 64 * 1024


@dataclass(frozen=True)
class TcfConsent:
    created: datetime
    last_updated: datetime
    cmp_id: int
    cmp_version: int
    consent_screen: int
    consent_language: str
    vendor_list_version: int
    policy_version: int
    use_non_standard_texts: bool
    purpose_one_treatment: bool
    publisher_cc: str
    purposes_consent: frozenset[int]
    purposes_legitimate_interest: frozenset[int]
    special_feature_optins: frozenset[int]
    vendor_consents: frozenset[int]
    vendor_legitimate_interests: frozenset[int]
    publisher_restriction_count: int = 0
    disclosed_vendors: frozenset[int] | None = None
    publisher_purposes_consent: frozenset[int] | None = None
    publisher_purposes_legitimate_interest: frozenset[int] | None = None

    @property
    def accepted(self) -> bool:
        return True


@dataclass(frozen=True)
class TcfRejection:
    reason: str

    @property
    def accepted(self) -> bool:
        return False


@dataclass
class _Walk:
    """What the strict walk read, kept to cross-check the library."""

    version: int = 0
    policy_version: int = 0
    is_service_specific: bool = False
    special_features: set[int] = field(default_factory=set)
    purposes: set[int] = field(default_factory=set)
    purposes_li: set[int] = field(default_factory=set)
    vendor_consents: set[int] = field(default_factory=set)
    vendor_li: set[int] = field(default_factory=set)
    restrictions: int = 0


def _ranges(r: BitReader, count: int, what: str) -> list[tuple[int, int]]:
    entries = []
    for _ in range(count):
        is_range = r.flag()
        start = r.uint(16)
        end = r.uint(16) if is_range else start
        if start < 1 or end < start:
            raise SignalError(f"{what} has an invalid range entry")
        entries.append((start, end))
    return entries


def _vendor_section(r: BitReader, what: str) -> set[int]:
    """MaxVendorId, IsRangeEncoding, then a bit field or range entries.  Range entries must lie
    within 1..MaxVendorId and must not overlap, which also bounds the work to MaxVendorId ids."""
    max_id = r.uint(16)
    if not r.flag():
        return r.bitfield(max_id) if max_id else set()
    entries = sorted(_ranges(r, r.uint(12), what))
    previous_end = 0
    for start, end in entries:
        if start <= previous_end or end > max_id:
            raise SignalError(f"{what} has an invalid range entry")
        previous_end = end
    ids: set[int] = set()
    for start, end in entries:
        ids.update(range(start, end + 1))
    return ids


def _walk_core(r: BitReader) -> _Walk:
    w = _Walk()
    w.version = r.uint(6)
    if w.version != 2:
        raise SignalError(f"TC string version {w.version} is not 2")
    if r.length < MIN_CORE_BITS:
        raise Truncated("core segment is truncated")
    r.skip(36 + 36 + 12 + 12 + 6)  # Created, LastUpdated, CmpId, CmpVersion, ConsentScreen
    r.letters(2, "consent language")
    r.skip(12)  # VendorListVersion
    w.policy_version = r.uint(6)
    w.is_service_specific = r.flag()
    r.skip(1)  # UseNonStandardTexts
    w.special_features = r.bitfield(12)
    w.purposes = r.bitfield(24)
    w.purposes_li = r.bitfield(24)
    r.skip(1)  # PurposeOneTreatment
    r.letters(2, "publisher country code")
    w.vendor_consents = _vendor_section(r, "vendor consent section")
    w.vendor_li = _vendor_section(r, "vendor legitimate interest section")
    w.restrictions = r.uint(12)
    for _ in range(w.restrictions):
        r.skip(6 + 2)  # PurposeId, RestrictionType
        _ranges(r, r.uint(12), "publisher restriction")
    r.finish(MAX_PADDING_BITS)
    return w


def _walk_segment(r: BitReader, kind: int) -> set[int] | None:
    """Checks a non-core segment's structure; returns the vendor ids of a vendors segment."""
    vendors = None
    if kind in (SEGMENT_DISCLOSED_VENDORS, SEGMENT_ALLOWED_VENDORS):
        vendors = _vendor_section(r, r.what)
    else:
        r.skip(24 + 24)  # PubPurposesConsent, PubPurposesLITransparency
        custom = r.uint(6)
        r.skip(2 * custom)
    r.finish(MAX_PADDING_BITS)
    return vendors


def _as_set(bits: dict[int, bool]) -> set[int]:
    return {i for i, on in bits.items() if on}


def _ranged(ranges: list[tuple[int, int]]) -> set[int]:
    ids: set[int] = set()
    for start, end in ranges:
        ids.update(range(start, end + 1))
    return ids


def _when(consent_time: datetime) -> datetime:
    return consent_time.replace(tzinfo=UTC)


def decode_tcf(s: str) -> TcfConsent | TcfRejection:
    """Decode a TCF v2.2 TC string, or say in a few words why it is refused."""
    try:
        return _decode(s)
    except SignalError as e:
        return TcfRejection(e.reason)
    except Exception as e:  # the library or a corner we did not foresee: refuse, never fail open
        return TcfRejection(f"undecodable TC string ({type(e).__name__})")


def _decode(s: str) -> TcfConsent:
    if not isinstance(s, str) or not s:
        raise SignalError("empty TC string")
    if len(s) > MAX_INPUT_CHARS:
        raise SignalError("TC string is too long")
    segments = s.split(".")
    core = BitReader(segments[0], "core segment")
    walk = _walk_core(core)
    if walk.policy_version < MIN_POLICY_VERSION:
        raise SignalError(f"policy version {walk.policy_version} is below {MIN_POLICY_VERSION} (TCF 2.2)")
    if not walk.is_service_specific:
        raise SignalError("IsServiceSpecific is 0 (global consent is not valid in TCF 2.2)")

    seen: set[int] = set()
    others: list[tuple[int, bytes, set[int] | None]] = []
    for text in segments[1:]:
        r = BitReader(text, "segment")
        kind = r.uint(3)
        if kind not in _SEGMENT_NAMES:
            raise SignalError(f"unknown segment type {kind}")
        if kind in seen:
            raise SignalError(f"duplicate {_SEGMENT_NAMES[kind]}")
        seen.add(kind)
        r.what = _SEGMENT_NAMES[kind]
        others.append((kind, r.bytes_padded(), _walk_segment(r, kind)))

    lib = ConsentV2(core.bytes_padded())
    purposes = _as_set(lib.purposes_consent)
    purposes_li = _as_set(lib.purposes_legitimate_interests)
    special = _as_set(lib.special_features_optin)
    vendors = _ranged(lib.consented_vendors_range) if lib.is_consent_range_encoding else _as_set(lib.consented_vendors)
    vendors_li = (
        _ranged(lib.interests_vendors_range) if lib.is_interests_range_encoding else _as_set(lib.interests_vendors)
    )
    if (
        lib.version != 2
        or lib.tcf_policy_version != walk.policy_version
        or purposes != walk.purposes
        or purposes_li != walk.purposes_li
        or special != walk.special_features
        or vendors != walk.vendor_consents
        or vendors_li != walk.vendor_li
        or lib.num_pub_restrictions != walk.restrictions
    ):
        raise SignalError("decoders disagree on the TC string")

    disclosed: frozenset[int] | None = None
    pub_consent: frozenset[int] | None = None
    pub_li: frozenset[int] | None = None
    for kind, data, walked_vendors in others:
        if kind == SEGMENT_DISCLOSED_VENDORS and walked_vendors is not None:
            # From the strict walk: iab-tcf's range reading of this segment is quadratic in the
            # number of entries (it rebuilds a dict per entry), a cost an attacker could choose.
            disclosed = frozenset(walked_vendors)
        elif kind == SEGMENT_PUBLISHER_TC:
            pub = NonCoreSegment(data).read_publisher_tc()
            pub_consent = frozenset(_as_set(pub.purposes_consent))
            pub_li = frozenset(_as_set(pub.purposes_lit_transparency))

    return TcfConsent(
        created=_when(lib.created),
        last_updated=_when(lib.last_updated),
        cmp_id=lib.cmp_id,
        cmp_version=lib.cmp_version,
        consent_screen=lib.consent_screen,
        consent_language=lib.consent_language.decode("ascii"),
        vendor_list_version=lib.vendor_list_version,
        policy_version=lib.tcf_policy_version,
        use_non_standard_texts=bool(lib.use_non_standard_stacks),
        purpose_one_treatment=bool(lib.purpose_one_treatment),
        publisher_cc=lib.publisher_cc.decode("ascii"),
        purposes_consent=frozenset(purposes),
        purposes_legitimate_interest=frozenset(purposes_li),
        special_feature_optins=frozenset(special),
        vendor_consents=frozenset(vendors),
        vendor_legitimate_interests=frozenset(vendors_li),
        publisher_restriction_count=walk.restrictions,
        disclosed_vendors=disclosed,
        publisher_purposes_consent=pub_consent,
        publisher_purposes_legitimate_interest=pub_li,
    )
