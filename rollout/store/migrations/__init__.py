"""Versioned SQL migrations of schema ``rollout``, applied in file-name order."""
