"""Paired image-to-image tasks (edges→image, colourisation, ...) and the edge maps they use."""
