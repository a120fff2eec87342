"""Data: layout scanning, patient-grouped splits, image loading, datasets, augmentation, fetching."""
