"""The musiqd background service: find new photos, queue them in the index, score them, write the scores."""
