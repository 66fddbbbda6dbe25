"""Batch imports of CRM, shop and POS exports (CSV, NDJSON, JSON)."""
