"""The shipped presets, as package data (``importlib.resources.files("pyratok.presets")``)."""
