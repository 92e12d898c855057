"""PyraTok's loss terms, one module per family: reconstruction, LPIPS, codebook, retention (drift + DINO)."""
