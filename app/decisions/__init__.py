"""The decision engine: consent, purpose and regime rules applied to a person or a population."""
