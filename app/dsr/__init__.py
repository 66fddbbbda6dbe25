"""Data-subject requests: intake, identity verification, deadlines, the request lifecycle and
its fulfilment (erasure, access package, corrections) through the personal-data inventory."""
