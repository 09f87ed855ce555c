"""Using a trained segmenter: the segmentation path, the evaluation protocol, SavedModel, pictures."""
