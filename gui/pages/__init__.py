"""The window's pages: Setup (with its option groups), Monitor, Runs and Playground."""
