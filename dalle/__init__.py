"""DALL·E: discrete VAE and the text+image-token transformer on the shared backbone."""
