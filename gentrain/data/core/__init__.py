"""The batch contract and the machinery every dataset shares: the DataModule base, the
tensor and file loaders, batch transforms, seeding and image decoding."""
