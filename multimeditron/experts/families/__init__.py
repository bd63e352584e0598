"""Expert families; importing this package registers every family's ids."""
from multimeditron.experts.families import (  # noqa: F401
    biomedclip,
    clip,
    dinov2,
    dinov3,
    mermed,
    retfound_dinov2,
    retfound_green,
    retfound_mae,
    timm_generic,
)
