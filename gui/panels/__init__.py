"""Panels the pages are built from: the memory estimate, the dataset X-ray, the evaluation."""
