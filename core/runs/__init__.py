"""Run records: the run folder (store), the events a run emits and their JSON codec, the recorder
that writes them into the folder, and the checkpoints kept there."""
