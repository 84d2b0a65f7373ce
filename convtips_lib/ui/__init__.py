"""ui: every plot and widget (ipywidgets is imported only when a widget is built)."""
