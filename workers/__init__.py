"""The live side of attnsched: code that touches torch, Ray and devices.

``scheduler`` and ``policies`` never import this package; the CLI reaches it
lazily when a command needs real compute.
"""
