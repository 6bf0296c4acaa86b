"""PixNet: dense spatial gene expression prediction from H&E slides.

The slide is mapped to a dense gene-expression map G (genes x H x W); the prediction
for any spot (disk, square bin, user region) is an aggregate of G inside it.
Coordinates everywhere are (x, y) = (column, row) in full-resolution pixels.
"""

__version__ = "0.1.0"
