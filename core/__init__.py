"""QLoRA Studio's headless core, in rooms: config, model, data, planner, training, after-training and
the CLI. It never imports Qt or anything under gui/ (checked by import-linter in the tests)."""
