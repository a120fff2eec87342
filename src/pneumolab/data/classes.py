"""The dataset's folder names: its classes (a label is an index into them) and its splits."""

CLASS_NAMES: tuple[str, ...] = ("NORMAL", "PNEUMONIA")
SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")
