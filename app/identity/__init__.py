"""The identity graph: identifiers (as blind indexes) linked to one master profile id."""
