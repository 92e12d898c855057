"""The shipped DeepSpeed JSONs, as package data (``importlib.resources.files("pyratok.deepspeed_configs")``)."""
