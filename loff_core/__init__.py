"""LOFF Studio engine: from a folder of medical images to an exported classifier head.

Nothing in this package imports Qt. Heavy libraries (torch, timm, h5py) are imported
inside the functions that need them, so `loff --help` and the catalog code stay fast.
"""

__version__ = "0.1.0"
