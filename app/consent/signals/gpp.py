"""Strict decoding of IAB GPP strings: the header and the US National (usnat,
section id 7) and California (usca, section id 8) sections.

Layout (GPP v1, checked against the IAB reference implementation
``@iabgpp/cmpapi`` 3.2.0):

* The string is ``header~section~section...``; the header lists the section
  ids present, in ascending order, and there must be exactly one ``~`` part per
  listed id.
* Header: Type (6 bits, 3), Version (6 bits, 1), SectionIds as a Fibonacci
  integer range (12-bit entry count; per entry one IsARange bit then one or
  two Fibonacci-coded offsets from the previous id).
* Each section is ``core[.gpc]`` in base64url ("compressed": padded to whole
  bytes, then to whole characters).  usnat version 1 has 12 sensitive data
  categories and 2 known-child consents (60 bits); usnat version 2, which the
  reference implementation writes, has 16 and 3 (70 bits).  usca version 1 has
  9 and 2 (46 bits).  The GPC subsection is SubsectionType (2 bits, 1) and Gpc
  (1 bit).
* Field values: 0 not applicable, 1 yes/opted out, 2 no/did not opt out;
  MspaCoveredTransaction is 1 (yes) or 2 (no).  The value 3 is reserved and
  rejected.

Sections other than usnat and usca are checked to be base64url text and
reported in ``undecoded_section_ids``; nothing is inferred from them.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.consent.signals._bits import BitReader, SignalError

HEADER_TYPE = 3
HEADER_VERSION = 1
USNAT_ID = 7
USCA_ID = 8
#: The reference encoder pads each segment to a byte, then to a character: < 12 bits of padding.
MAX_PADDING_BITS = 12
MAX_INPUT_CHARS = 64 * 1024
MAX_SECTION_ID = 1000

NOT_APPLICABLE = 0
OPTED_OUT = 1
DID_NOT_OPT_OUT = 2


@dataclass(frozen=True)
class UsSection:
    """The core (and GPC) subsection of usnat or usca.  Fields a section does not have are None."""

    name: str
    section_id: int
    version: int
    sharing_notice: int | None
    sale_opt_out_notice: int
    sharing_opt_out_notice: int
    targeted_advertising_opt_out_notice: int | None
    sensitive_data_processing_opt_out_notice: int | None
    sensitive_data_limit_use_notice: int
    sale_opt_out: int
    sharing_opt_out: int
    targeted_advertising_opt_out: int | None
    sensitive_data_processing: tuple[int, ...]
    known_child_sensitive_data_consents: tuple[int, ...]
    personal_data_consents: int
    mspa_covered_transaction: int
    mspa_opt_out_option_mode: int
    mspa_service_provider_mode: int
    gpc_segment_included: bool
    gpc: bool | None


@dataclass(frozen=True)
class GppConsent:
    section_ids: tuple[int, ...]
    usnat: UsSection | None
    usca: UsSection | None
    undecoded_section_ids: tuple[int, ...]

    @property
    def accepted(self) -> bool:
        return True

    def _sections(self) -> list[UsSection]:
        return [s for s in (self.usnat, self.usca) if s is not None]

    @property
    def sale_opt_out(self) -> bool:
        """True when any decoded section records an opt-out of sale."""
        return any(s.sale_opt_out == OPTED_OUT for s in self._sections())

    @property
    def sharing_opt_out(self) -> bool:
        return any(s.sharing_opt_out == OPTED_OUT for s in self._sections())

    @property
    def targeted_advertising_opt_out(self) -> bool:
        return any(s.targeted_advertising_opt_out == OPTED_OUT for s in self._sections())

    @property
    def gpc(self) -> bool:
        return any(s.gpc is True for s in self._sections())


@dataclass(frozen=True)
class GppRejection:
    reason: str

    @property
    def accepted(self) -> bool:
        return False


def _tri(r: BitReader, name: str, allowed: range = range(3)) -> int:
    v = r.uint(2)
    if v not in allowed:
        raise SignalError(f"{r.what}: {name} has the reserved value {v}")
    return v


def _tri_list(r: BitReader, name: str, n: int) -> tuple[int, ...]:
    return tuple(_tri(r, name) for _ in range(n))


def _header(text: str) -> list[int]:
    r = BitReader(text, "GPP header")
    kind = r.uint(6)
    if kind != HEADER_TYPE:
        raise SignalError(f"GPP header type {kind} is not {HEADER_TYPE}")
    version = r.uint(6)
    if version != HEADER_VERSION:
        raise SignalError(f"GPP header version {version} is not {HEADER_VERSION}")
    count = r.uint(12)
    ids: list[int] = []
    last = 0
    for _ in range(count):
        if r.flag():
            start = last + r.fibonacci()
            end = start + r.fibonacci()
        else:
            start = end = last + r.fibonacci()
        if end > MAX_SECTION_ID:
            raise SignalError("GPP header lists an impossible section id")
        ids.extend(range(start, end + 1))
        last = end
    r.finish(MAX_PADDING_BITS)
    if not ids:
        raise SignalError("GPP header lists no sections")
    return ids


def _gpc(text: str, what: str) -> bool:
    r = BitReader(text, f"{what} GPC subsection")
    kind = r.uint(2)
    if kind != 1:
        raise SignalError(f"{what}: subsection type {kind} is not 1 (GPC)")
    gpc = r.flag()
    r.finish(MAX_PADDING_BITS)
    return gpc


def _us_section(section_id: int, text: str) -> UsSection:
    name = "usnat" if section_id == USNAT_ID else "usca"
    parts = text.split(".")
    if len(parts) > 2:
        raise SignalError(f"{name} has more than one subsection")
    r = BitReader(parts[0], name)
    version = r.uint(6)
    if section_id == USNAT_ID:
        if version not in (1, 2):
            raise SignalError(f"usnat version {version} is not 1 or 2")
        sharing_notice: int | None = _tri(r, "SharingNotice")
        sale_notice = _tri(r, "SaleOptOutNotice")
        sharing_oo_notice = _tri(r, "SharingOptOutNotice")
        ta_notice: int | None = _tri(r, "TargetedAdvertisingOptOutNotice")
        sdp_notice: int | None = _tri(r, "SensitiveDataProcessingOptOutNotice")
        sdlu_notice = _tri(r, "SensitiveDataLimitUseNotice")
        sale = _tri(r, "SaleOptOut")
        sharing = _tri(r, "SharingOptOut")
        ta: int | None = _tri(r, "TargetedAdvertisingOptOut")
        sdp = _tri_list(r, "SensitiveDataProcessing", 12 if version == 1 else 16)
        child = _tri_list(r, "KnownChildSensitiveDataConsents", 2 if version == 1 else 3)
    else:
        if version != 1:
            raise SignalError(f"usca version {version} is not 1")
        sharing_notice = ta_notice = sdp_notice = ta = None
        sale_notice = _tri(r, "SaleOptOutNotice")
        sharing_oo_notice = _tri(r, "SharingOptOutNotice")
        sdlu_notice = _tri(r, "SensitiveDataLimitUseNotice")
        sale = _tri(r, "SaleOptOut")
        sharing = _tri(r, "SharingOptOut")
        sdp = _tri_list(r, "SensitiveDataProcessing", 9)
        child = _tri_list(r, "KnownChildSensitiveDataConsents", 2)
    personal = _tri(r, "PersonalDataConsents")
    mspa_covered = _tri(r, "MspaCoveredTransaction", range(1, 3))
    mspa_oo_mode = _tri(r, "MspaOptOutOptionMode")
    mspa_sp_mode = _tri(r, "MspaServiceProviderMode")
    r.finish(MAX_PADDING_BITS)
    gpc = _gpc(parts[1], name) if len(parts) == 2 else None
    return UsSection(
        name=name,
        section_id=section_id,
        version=version,
        sharing_notice=sharing_notice,
        sale_opt_out_notice=sale_notice,
        sharing_opt_out_notice=sharing_oo_notice,
        targeted_advertising_opt_out_notice=ta_notice,
        sensitive_data_processing_opt_out_notice=sdp_notice,
        sensitive_data_limit_use_notice=sdlu_notice,
        sale_opt_out=sale,
        sharing_opt_out=sharing,
        targeted_advertising_opt_out=ta,
        sensitive_data_processing=sdp,
        known_child_sensitive_data_consents=child,
        personal_data_consents=personal,
        mspa_covered_transaction=mspa_covered,
        mspa_opt_out_option_mode=mspa_oo_mode,
        mspa_service_provider_mode=mspa_sp_mode,
        gpc_segment_included=gpc is not None,
        gpc=gpc,
    )


def decode_gpp(s: str) -> GppConsent | GppRejection:
    """Decode a GPP string's header and its usnat/usca sections, or say briefly why it is refused."""
    try:
        return _decode(s)
    except SignalError as e:
        return GppRejection(e.reason)
    except Exception as e:  # a corner we did not foresee: refuse, never fail open
        return GppRejection(f"undecodable GPP string ({type(e).__name__})")


def _decode(s: str) -> GppConsent:
    if not isinstance(s, str) or not s:
        raise SignalError("empty GPP string")
    if len(s) > MAX_INPUT_CHARS:
        raise SignalError("GPP string is too long")
    header, *sections = s.split("~")
    ids = _header(header)
    if len(sections) != len(ids):
        raise SignalError(f"GPP header lists {len(ids)} sections but the string has {len(sections)}")
    usnat = usca = None
    undecoded: list[int] = []
    for section_id, text in zip(ids, sections, strict=True):
        if section_id in (USNAT_ID, USCA_ID):
            section = _us_section(section_id, text)
            if section_id == USNAT_ID:
                usnat = section
            else:
                usca = section
        else:
            for part in text.split("."):
                BitReader(part, f"section {section_id}")  # base64url and non-empty, nothing more
            undecoded.append(section_id)
    return GppConsent(section_ids=tuple(ids), usnat=usnat, usca=usca, undecoded_section_ids=tuple(undecoded))
