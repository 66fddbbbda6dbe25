"""Consent-signal decoders (pure functions, no database): IAB TCF v2.2 and GPP (usnat, usca)."""

from app.consent.signals.gpp import GppConsent, GppRejection, UsSection, decode_gpp
from app.consent.signals.tcf import TcfConsent, TcfRejection, decode_tcf

__all__ = [
    "GppConsent",
    "GppRejection",
    "TcfConsent",
    "TcfRejection",
    "UsSection",
    "decode_gpp",
    "decode_tcf",
]
