"""Tags (标签体系): a taxonomy of labels given to people by hand, by rule or by threshold."""
