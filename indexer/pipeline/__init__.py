"""Ingestion stages: sources (paths, URLs, uploads, manifests) -> decode -> embed -> write, composed by runner."""
