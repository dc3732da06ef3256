"""Panels the pages are built from: the memory estimate, the dataset X-ray, the evaluation, the chat,
the monitor's charts, the runs table and a run's notes."""
