"""Expert families; importing this package registers every family's ids."""
from multimeditron.experts.families import timm_generic  # noqa: F401
