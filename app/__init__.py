"""Consentry: a privacy-first customer data platform."""

__version__ = "0.1.0"
