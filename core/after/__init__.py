"""After training: load a run's adapter on its base model, generate replies with it and score them."""
