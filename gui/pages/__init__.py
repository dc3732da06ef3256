"""The window's pages: Setup (with its option groups), Monitor, Runs and Playground, and the binder
that carries a run between the toolbar, its controller and them."""
