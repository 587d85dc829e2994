"""Where a learned head meets EoMT's sliding windows (no torch: the CLI lists the choices).

The seed applies its heads per window, then stitches: ``window`` runs the head on each window's
own class scores and features and averages the probabilities where windows overlap;
``stitched`` runs it once on the stitched maps. They agree whenever one window is the image as
it is; they differ at window seams and when the image is rescaled to the window. A head's
geometry is stored in its checkpoint metadata and on its head version.
"""

from __future__ import annotations

from anomseg.errors import InputError

STITCHED, WINDOW = "stitched", "window"
GEOMETRIES = (STITCHED, WINDOW)


def check_geometry(geometry: str) -> str:
    """``geometry`` if it is a known head geometry, else InputError naming the known ones."""
    if geometry not in GEOMETRIES:
        raise InputError(f"head geometry {geometry!r}; expected one of {', '.join(GEOMETRIES)}")
    return geometry
