"""LaWM / LaWAM models, trainers and the torch dataset layer over the feature store.

Reads the store only through `pipeline.store` (FeatureStore, pairs.PairReader, label sets),
pinned to a version it records with each checkpoint.
"""
