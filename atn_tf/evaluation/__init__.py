"""Evaluation stage: reading the committed reports against the project's targets."""
