"""The product's side of the audit ledger: recording what was done, and the auditors' API."""
