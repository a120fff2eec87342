"""Input scope: is an image something the model was trained to judge? (sanity, DICOM header, OOD)."""
