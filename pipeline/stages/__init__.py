"""The pipeline's stages, one module each: teacher, shadows, compress, attack, search."""
