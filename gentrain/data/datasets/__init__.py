"""Named datasets, one builder per module; configs/data/*.yaml point their ``_target_`` here."""
