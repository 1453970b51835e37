"""Writing scores into photo metadata: safe file replacement, content hashes and the metadata writers."""
