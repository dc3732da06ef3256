"""The dataset pipeline: sources (files, folders, Hub), row formats, chat templates, tokenizing with
loss masks, and the X-ray report of what the pipeline did."""
