"""Studies: each lesson's own measurements, one module per lesson (above topics, below ui)."""
