"""The consent/purpose engine: every path that lets personal data out asks it first."""
