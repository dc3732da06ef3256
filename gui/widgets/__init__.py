"""Reusable widgets: schema-bound form editors, model and data pickers, live charts, the stacked bar."""
