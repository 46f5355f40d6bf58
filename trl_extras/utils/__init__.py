"""Small infrastructure helpers shared by the trainers and the pipeline (atomic writes, settings fingerprints)."""
