"""The model: where its weights come from, how they are quantized, where LoRA goes, its shape from
config.json, and the devices it runs on."""
