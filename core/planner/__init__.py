"""The memory planner: a run's peak GPU memory predicted from config.json alone, and make-it-fit."""
