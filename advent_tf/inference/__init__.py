"""Using a trained segmenter: segmentation, the evaluation protocol, SavedModel, pictures."""
