"""Datasets: listing shards into a dataset listing, reading and decoding images, a demo set."""

from vsae.data.images import decode, read_images
from vsae.data.listing import Listing, list_dataset, read_listing, write_listing

__all__ = ["Listing", "decode", "list_dataset", "read_images", "read_listing", "write_listing"]
