"""LaWM / LaWAM models, trainers and torch datasets (next issues).

Reads the feature store only through `pipeline.store` (FeatureStore.sample_pairs /
read_pairs / episode), pinned to a version it records with each checkpoint.
"""
