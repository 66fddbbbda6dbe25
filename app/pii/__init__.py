"""Personal data in free text: detection (presidio, English and Chinese), redaction, classification."""
