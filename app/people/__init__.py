"""The person as staff see and correct them: the 360° view, lookups, corrections, merges."""
