"""The code the service shares with the pipeline: params, the dataset's facts, the CNN's shape
arithmetic, preprocessing, inference and prediction records. No TensorFlow, no stage: the Bento
packs this package whole."""
