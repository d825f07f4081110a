"""Security primitives of the service: encryption of meter credentials at rest."""

from cgm.security.secrets import SecretBox, SecretKeyError, load_key, secret_box

__all__ = ["SecretKeyError", "SecretBox", "load_key", "secret_box"]
