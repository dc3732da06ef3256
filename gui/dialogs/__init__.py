"""Dialogs opened from the pages: export a run, import another tool's config, and the window's message boxes."""
