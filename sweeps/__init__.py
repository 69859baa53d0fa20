"""What a sweep is: the spec, its validation, and its translation into a Ray Tune search."""
