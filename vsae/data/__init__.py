"""Datasets: listing shards into a manifest, reading and decoding images, a demo set."""

from vsae.data.images import decode, read_images
from vsae.data.listing import LISTING_NAME, Listing, list_dataset, read_listing, store_listing_uri, write_listing

__all__ = ["LISTING_NAME", "Listing", "store_listing_uri", "decode", "list_dataset", "read_images", "read_listing", "write_listing"]
