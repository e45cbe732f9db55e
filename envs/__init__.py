"""Gymnasium environments for point-prompt attack and defence (filled in by the PPD core issue)."""
